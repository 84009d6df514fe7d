//! The server under test: its WebSocket and HTTP API addresses, how
//! connections authenticate, and the rule that targets are loopback only
//! (a load generator must not be pointed at someone else's machine by
//! accident).

use std::net::{IpAddr, Ipv4Addr, SocketAddr};

use serde::Serialize;
use tokio_tungstenite::tungstenite::http::Uri;

use crate::protocol::Protocol;

/// How connections reach the server.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Transport {
    /// The WebSocket at `--url`.
    #[default]
    #[value(name = "websocket")]
    #[serde(rename = "websocket")]
    WebSocket,
    /// HTTP-streaming (`/connection/http_stream`, JSON lines), commands
    /// posted to `/emulation` (the server needs `http_stream.enabled`).
    #[value(name = "http_stream")]
    HttpStream,
    /// Server-sent events (`/connection/sse`), commands posted to
    /// `/emulation` (the server needs `sse.enabled`).
    #[value(name = "sse")]
    Sse,
}

impl Transport {
    /// The endpoint of an emulated transport.
    pub fn path(self) -> &'static str {
        match self {
            Transport::WebSocket => "/connection/websocket",
            Transport::HttpStream => "/connection/http_stream",
            Transport::Sse => "/connection/sse",
        }
    }
}

/// Why a target cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum TargetError {
    #[error("invalid URL {0:?}: {1}")]
    BadUrl(String, String),
    #[error(
        "{0:?} is not a loopback address: herald-bench only targets 127.0.0.0/8, ::1 or localhost"
    )]
    NotLoopback(String),
    #[error("cannot sign a token: {0}")]
    Sign(String),
}

/// How each connection authenticates in its connect command.
#[derive(Debug, Clone, Default)]
pub enum Auth {
    /// No token: the server must accept anonymous connections (`--dev` or
    /// `client.insecure`).
    #[default]
    None,
    /// The same token for every connection.
    Token(String),
    /// An HS256 token per connection (`sub` = `bench-<n>`), signed with this
    /// secret.
    Hmac(String),
}

/// Lifetime of the tokens signed for `Auth::Hmac`; longer than any run.
const TOKEN_LIFETIME_SECS: u64 = 24 * 3600;

#[derive(Serialize)]
struct Claims {
    sub: String,
    exp: u64,
}

impl Auth {
    /// The token for connection number `n` (empty for `Auth::None`).
    pub fn token(&self, n: usize) -> Result<String, TargetError> {
        match self {
            Auth::None => Ok(String::new()),
            Auth::Token(t) => Ok(t.clone()),
            Auth::Hmac(secret) => {
                let now = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map(|d| d.as_secs())
                    .unwrap_or(0);
                let claims = Claims {
                    sub: format!("bench-{n}"),
                    exp: now + TOKEN_LIFETIME_SECS,
                };
                jsonwebtoken::encode(
                    &jsonwebtoken::Header::default(),
                    &claims,
                    &jsonwebtoken::EncodingKey::from_secret(secret.as_bytes()),
                )
                .map_err(|e| TargetError::Sign(e.to_string()))
            }
        }
    }
}

/// A checked WebSocket URL on a loopback host, and the protocol to speak.
#[derive(Debug, Clone)]
pub struct Target {
    pub ws_url: String,
    /// The server's socket address (`localhost` is 127.0.0.1).
    pub addr: SocketAddr,
    pub protocol: Protocol,
    pub transport: Transport,
    /// Offer permessage-deflate on WebSockets, and insist on it.
    pub compression: bool,
    /// `host:port` of the server, used to derive the HTTP API address.
    authority: String,
}

impl Target {
    /// Parses and checks a `ws://` URL (TLS is not spoken: targets are on
    /// this machine).
    pub fn parse(url: &str) -> Result<Self, TargetError> {
        let bad = |why: &str| TargetError::BadUrl(url.to_string(), why.to_string());
        let uri: Uri = url.parse().map_err(|e| bad(&format!("{e}")))?;
        if uri.scheme_str() != Some("ws") {
            return Err(bad("use ws:// (loopback targets need no TLS)"));
        }
        let host = uri.host().ok_or_else(|| bad("no host"))?;
        check_loopback(host)?;
        let bare = host.trim_start_matches('[').trim_end_matches(']');
        let ip = bare
            .parse::<IpAddr>()
            .unwrap_or(IpAddr::V4(Ipv4Addr::LOCALHOST));
        let authority = uri.authority().ok_or_else(|| bad("no host"))?.to_string();
        Ok(Self {
            ws_url: url.to_string(),
            addr: SocketAddr::new(ip, uri.port_u16().unwrap_or(80)),
            protocol: Protocol::default(),
            transport: Transport::default(),
            compression: false,
            authority,
        })
    }

    /// The same target spoken to with `protocol`.
    pub fn with_protocol(mut self, protocol: Protocol) -> Self {
        self.protocol = protocol;
        self
    }

    /// The same target with WebSockets compressed (permessage-deflate).
    pub fn with_compression(mut self, compression: bool) -> Self {
        self.compression = compression;
        self
    }

    /// The same target reached over `transport`.
    pub fn with_transport(mut self, transport: Transport) -> Self {
        self.transport = transport;
        self
    }

    /// The server API URL for `method` on the same host and port, e.g.
    /// `http://127.0.0.1:8000/api/publish`.
    pub fn api_url(&self, method: &str) -> String {
        self.http_url(&format!("/api/{method}"))
    }

    /// An HTTP URL of `path` on the same host and port.
    pub fn http_url(&self, path: &str) -> String {
        format!("http://{}{path}", self.authority)
    }

    /// An HTTP URL of `path` at the server's address (no name to resolve
    /// for each new connection).
    pub fn http_url_at_addr(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }
}

/// Checks that an HTTP URL (such as a publish endpoint) is on loopback.
pub fn check_http_url(url: &str) -> Result<(), TargetError> {
    let bad = |why: &str| TargetError::BadUrl(url.to_string(), why.to_string());
    let uri: Uri = url.parse().map_err(|e| bad(&format!("{e}")))?;
    if !matches!(uri.scheme_str(), Some("http")) {
        return Err(bad("use http://"));
    }
    check_loopback(uri.host().ok_or_else(|| bad("no host"))?)
}

/// Accepts `localhost` and loopback IP literals (IPv6 possibly bracketed).
pub fn check_loopback(host: &str) -> Result<(), TargetError> {
    let bare = host.trim_start_matches('[').trim_end_matches(']');
    let ok = bare.eq_ignore_ascii_case("localhost")
        || bare.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback());
    if ok {
        Ok(())
    } else {
        Err(TargetError::NotLoopback(host.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_rule() {
        for ok in ["127.0.0.1", "127.3.4.5", "localhost", "[::1]", "::1"] {
            assert!(check_loopback(ok).is_ok(), "{ok}");
        }
        for bad in ["10.0.0.1", "example.com", "0.0.0.0", "[::2]"] {
            assert!(check_loopback(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn api_url_from_ws_url() {
        let t = Target::parse("ws://127.0.0.1:8000/connection/websocket").unwrap();
        assert_eq!(t.api_url("publish"), "http://127.0.0.1:8000/api/publish");
        assert_eq!(t.addr, "127.0.0.1:8000".parse().unwrap());
        let t = Target::parse("ws://localhost:9/x").unwrap();
        assert_eq!(t.addr, "127.0.0.1:9".parse().unwrap());
        assert!(Target::parse("wss://127.0.0.1:8000/").is_err());
        assert!(check_http_url("http://127.0.0.1:8000/publish").is_ok());
        assert!(check_http_url("http://192.0.2.1/publish").is_err());
        assert!(Target::parse("http://127.0.0.1:8000/").is_err());
        assert!(Target::parse("ws://192.0.2.1:8000/").is_err());
    }

    #[test]
    fn hmac_tokens_differ_per_connection() {
        let auth = Auth::Hmac("s".into());
        let (a, b) = (auth.token(1).unwrap(), auth.token(2).unwrap());
        assert_ne!(a, b);
        assert_eq!(a.split('.').count(), 3);
        assert_eq!(Auth::None.token(1).unwrap(), "");
    }
}
