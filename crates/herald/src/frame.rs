//! Frames: what a connection's transport sends — a reply, a push or a
//! publication, already encoded. Protocol v2's JSON format goes out as text
//! frames, checked as UTF-8 once when made and then shared by every
//! connection they go to. A publication or join/leave event is encoded once
//! per format and cached on it ([`herald_protocol::Format`]); [`Json`] is
//! that format for JSON clients.

use herald_protocol::{json, Format, PresenceEvent, Publication};

/// An encoded message ready to go out as a text message.
pub type Frame = tokio_tungstenite::tungstenite::Utf8Bytes;

/// `bytes` as a [`Frame`]. Everything encoded is UTF-8 (each part of it was
/// UTF-8 JSON when it arrived), so `None` means a bug, logged here; the
/// frame is not sent.
pub fn checked<B>(bytes: B) -> Option<Frame>
where
    Frame: TryFrom<B, Error = std::str::Utf8Error>,
{
    match Frame::try_from(bytes) {
        Ok(frame) => Some(frame),
        Err(e) => {
            tracing::error!(error = %e, "encoded frame is not UTF-8; not sent");
            None
        }
    }
}

/// Protocol v2's JSON format: a publication or a join/leave event as one
/// push, in one text frame.
pub struct Json;

impl Format<Publication> for Json {
    type Frame = Frame;

    fn encode(publication: &Publication) -> Option<Frame> {
        checked(json::encode_publication_push(publication))
    }
}

impl Format<PresenceEvent> for Json {
    type Frame = Frame;

    fn encode(event: &PresenceEvent) -> Option<Frame> {
        checked(json::encode_presence_push(event))
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use bytes::Bytes;

    use super::*;

    #[test]
    fn frames_are_checked_once_and_shared() {
        assert!(checked(Bytes::from_static(b"{\"a\":\"\xff\"}")).is_none());
        assert_eq!(checked(Bytes::from_static(b"{}")).unwrap(), "{}");
        let p = Publication::new(Arc::from("c"), Bytes::from_static(b"1"), None);
        let (a, b) = (p.frame::<Json>().unwrap(), p.frame::<Json>().unwrap());
        assert_eq!(a, r#"{"push":{"channel":"c","pub":{"data":1}}}"#);
        assert_eq!(a.as_str().as_ptr(), b.as_str().as_ptr(), "one buffer");
        let bad = Publication::new(Arc::from("c"), Bytes::from_static(b"\"\xff\""), None);
        assert!(bad.frame::<Json>().is_none());
    }
}
