//! Error codes carried in replies and disconnect codes carried in close frames,
//! with the numbers and reasons the official SDKs act upon.

use std::borrow::Cow;
use std::fmt;

/// An error in a reply: the command failed, the connection stays.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProtocolError {
    pub code: u32,
    pub message: Cow<'static, str>,
    /// The SDK retries temporary errors.
    pub temporary: bool,
}

impl ProtocolError {
    const fn new(code: u32, message: &'static str) -> Self {
        Self {
            code,
            message: Cow::Borrowed(message),
            temporary: false,
        }
    }

    /// An error someone else chose (the application's backend, through a
    /// proxy).
    pub fn custom(code: u32, message: &str, temporary: bool) -> Self {
        Self {
            code,
            message: Cow::Owned(message.to_string()),
            temporary,
        }
    }
    pub const INTERNAL: Self = Self {
        code: 100,
        message: Cow::Borrowed("internal server error"),
        temporary: true,
    };
    /// An internal error whose cause is worth naming: the broker or store
    /// a publication needs cannot be reached (temporary, like `INTERNAL`).
    pub const BROKER_UNAVAILABLE: Self = Self {
        code: 100,
        message: Cow::Borrowed("internal server error: broker unavailable"),
        temporary: true,
    };
    pub const UNAUTHORIZED: Self = Self::new(101, "unauthorized");
    pub const UNKNOWN_CHANNEL: Self = Self::new(102, "unknown channel");
    pub const PERMISSION_DENIED: Self = Self::new(103, "permission denied");
    pub const METHOD_NOT_FOUND: Self = Self::new(104, "method not found");
    pub const ALREADY_SUBSCRIBED: Self = Self::new(105, "already subscribed");
    pub const LIMIT_EXCEEDED: Self = Self::new(106, "limit exceeded");
    /// A publication larger than its namespace allows, or than a
    /// subscriber's queue could hold.
    pub const PUBLICATION_TOO_LARGE: Self = Self::new(106, "limit exceeded: publication too large");
    pub const BAD_REQUEST: Self = Self::new(107, "bad request");
    /// A channel name with a control character (NUL, newline, …): refused
    /// on every path, before it reaches a broker or a store.
    pub const INVALID_CHANNEL: Self = Self::new(107, "bad request: invalid channel name");
    pub const NOT_AVAILABLE: Self = Self::new(108, "not available");
    pub const TOKEN_EXPIRED: Self = Self::new(109, "token expired");
    pub const EXPIRED: Self = Self::new(110, "expired");
    pub const TOO_MANY_REQUESTS: Self = Self {
        code: 111,
        message: Cow::Borrowed("too many requests"),
        temporary: true,
    };
    pub const UNRECOVERABLE_POSITION: Self = Self::new(112, "unrecoverable position");
}

impl fmt::Display for ProtocolError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({})", self.message, self.code)
    }
}

impl std::error::Error for ProtocolError {}

/// Why the server closes a connection. Codes 3500..=3999 tell the SDK not to
/// reconnect; the others (3000..=3499) invite a reconnect.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Disconnect {
    pub code: u16,
    pub reason: String,
}

/// The longest reason a close frame carries (its payload is at most 125
/// bytes, two of them the code).
pub const MAX_REASON: usize = 123;

impl Disconnect {
    /// A disconnect; a reason too long for a close frame is cut (at a
    /// character boundary).
    pub fn new(code: u16, reason: impl Into<String>) -> Self {
        let mut reason = reason.into();
        if reason.len() > MAX_REASON {
            let mut end = MAX_REASON;
            while !reason.is_char_boundary(end) {
                end -= 1;
            }
            reason.truncate(end);
        }
        Self { code, reason }
    }

    /// A disconnect someone else chose (the application's backend): only
    /// the codes applications may use, 3000 to 4999.
    pub fn custom(code: u32, reason: &str) -> Option<Self> {
        u16::try_from(code)
            .ok()
            .filter(|c| (3000..=4999).contains(c))
            .map(|c| Self::new(c, reason))
    }
    /// Whether the SDK reconnects after this disconnect.
    pub fn reconnect(&self) -> bool {
        !(3500..=3999).contains(&self.code) && !(4500..=4999).contains(&self.code)
    }
    pub fn connection_closed() -> Self {
        Self::new(3000, "connection closed")
    }
    pub fn shutdown() -> Self {
        Self::new(3001, "shutdown")
    }
    pub fn internal() -> Self {
        Self::new(3004, "internal server error")
    }
    pub fn expired() -> Self {
        Self::new(3005, "connection expired")
    }
    pub fn sub_expired() -> Self {
        Self::new(3006, "subscription expired")
    }
    pub fn slow() -> Self {
        Self::new(3008, "slow")
    }
    pub fn write_error() -> Self {
        Self::new(3009, "write error")
    }
    /// A server-side subscription missed publications it cannot recover
    /// without a reconnect.
    pub fn insufficient_state() -> Self {
        Self::new(3010, "insufficient state")
    }
    pub fn force_reconnect() -> Self {
        Self::new(3011, "force reconnect")
    }
    pub fn no_pong() -> Self {
        Self::new(3012, "no pong")
    }
    pub fn invalid_token() -> Self {
        Self::new(3500, "invalid token")
    }
    /// The token was revoked (`revoke_token`, `invalidate_user_tokens`).
    pub fn token_revoked() -> Self {
        Self::new(3500, "token revoked")
    }
    pub fn bad_request() -> Self {
        Self::new(3501, "bad request")
    }
    pub fn stale() -> Self {
        Self::new(3502, "stale")
    }
    pub fn force_disconnect() -> Self {
        Self::new(3503, "force disconnect")
    }
    /// The user is blocked (`block_user`): the SDK does not reconnect.
    pub fn blocked() -> Self {
        Self::new(3503, "user blocked")
    }
    pub fn connection_limit() -> Self {
        Self::new(3504, "connection limit")
    }
    pub fn channel_limit() -> Self {
        Self::new(3505, "channel limit")
    }
    pub fn permission_denied() -> Self {
        Self::new(3507, "permission denied")
    }
    pub fn message_too_big() -> Self {
        Self::new(1009, "message too big")
    }
    /// A text message that is not UTF-8 (RFC 6455 §8.1).
    pub fn invalid_payload() -> Self {
        Self::new(1007, "invalid utf-8")
    }
    /// A frame the WebSocket protocol does not allow (RFC 6455 §7.4.1).
    pub fn websocket_protocol_error() -> Self {
        Self::new(1002, "protocol error")
    }
}

/// Codes of the `unsubscribe` push: at or above 2500 the SDK resubscribes.
pub mod unsubscribe {
    pub const SERVER: (u32, &str) = (2000, "server unsubscribe");
    pub const INSUFFICIENT: (u32, &str) = (2500, "insufficient state");
    pub const EXPIRED: (u32, &str) = (2501, "subscription expired");
    /// The subscription token was revoked: the SDK does not resubscribe.
    pub const TOKEN_REVOKED: (u32, &str) = (2000, "token revoked");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reconnect_advice_follows_code_ranges() {
        for (d, reconnect) in [
            (Disconnect::shutdown(), true),
            (Disconnect::slow(), true),
            (Disconnect::no_pong(), true),
            (Disconnect::invalid_token(), false),
            (Disconnect::bad_request(), false),
            (Disconnect::force_disconnect(), false),
            (Disconnect::new(4500, "custom"), false),
            (Disconnect::new(4000, "custom"), true),
        ] {
            assert_eq!(d.reconnect(), reconnect, "{d:?}");
        }
    }
}

#[cfg(test)]
mod disconnect_tests {
    use super::*;

    #[test]
    fn reasons_fit_a_close_frame_and_custom_codes_stay_in_range() {
        let long = "é".repeat(100);
        let d = Disconnect::new(4000, long);
        assert!(d.reason.len() <= MAX_REASON);
        assert!(d.reason.chars().all(|c| c == 'é'));
        assert_eq!(Disconnect::custom(4501, "x").unwrap().code, 4501);
        for bad in [0, 1000, 2999, 5000, 65535, 70000] {
            assert!(Disconnect::custom(bad, "x").is_none(), "{bad}");
        }
    }
}
