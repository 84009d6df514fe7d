//! What a client's reads and commands come to: a delivery, a reply, or
//! what went wrong.

use std::time::Duration;

use herald_protocol::Disconnect;

use super::MAX_STASHED;
use crate::protocol::Stamp;

/// What went wrong with a connection or a command.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("cannot open the WebSocket: {0}")]
    Open(String),
    #[error("no answer within {0:?} ({1})")]
    Timeout(Duration, &'static str),
    #[error("server closed the connection: code {} {:?}", .0.code, .0.reason)]
    Closed(Disconnect),
    #[error("connection lost: {0}")]
    Lost(String),
    /// The command failed; the connection stays usable.
    #[error("error reply {code}: {message}")]
    Reply { code: u32, message: String },
    #[error("unreadable message from the server: {0}")]
    Garbled(String),
    #[error("more than {MAX_STASHED} pushes arrived while waiting for a reply")]
    Overflow,
    #[error("{0}")]
    Unsupported(String),
}

impl ClientError {
    /// A short label to count errors by in reports.
    pub fn kind(&self) -> String {
        match self {
            ClientError::Open(_) => "open".into(),
            ClientError::Timeout(..) => "timeout".into(),
            ClientError::Closed(d) => format!("closed {}", d.code),
            ClientError::Lost(_) => "lost".into(),
            ClientError::Reply { code, .. } => format!("reply {code}"),
            ClientError::Garbled(_) => "garbled".into(),
            ClientError::Overflow => "overflow".into(),
            ClientError::Unsupported(_) => "unsupported".into(),
        }
    }
}

/// A publication pushed to a subscriber.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Delivery {
    /// Carries a load-generator stamp.
    Stamped(Stamp),
    /// Someone else's publication (the start of the message, for reports).
    Unstamped(String),
}

/// What a client with several commands in flight reads next
/// ([`Client::next_event`]).
#[derive(Debug)]
pub enum Event {
    Delivery(Delivery),
    /// The reply to command `id` ([`Client::send_command`]); `error` when
    /// the server refused it ([`ClientError::Reply`]).
    Reply {
        id: u32,
        error: Option<ClientError>,
    },
}
