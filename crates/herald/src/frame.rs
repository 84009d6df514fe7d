//! Frames: what a connection's transport sends — a reply, a push or a
//! publication, already encoded — and the wire formats that make them.
//! Protocol v2's JSON format goes out as text frames, checked as UTF-8 once
//! when made; its Protobuf format as binary frames. A publication or
//! join/leave event is encoded once per format and cached on it
//! ([`herald_protocol::Format`]): [`Json`] and [`Protobuf`] are those
//! formats, and [`Encoding`] is what a connection speaks.

use bytes::Bytes;
use herald_protocol::command::Command;
use herald_protocol::json::{self, DecodeError};
use herald_protocol::reply::{Push, ReplyBody};
use herald_protocol::{protobuf, Format, PresenceEvent, ProtocolError, Publication};
use tokio_tungstenite::tungstenite::Utf8Bytes;

/// An encoded message ready to go out: text for JSON, binary for Protobuf.
/// Cloning shares the buffer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame {
    Text(Utf8Bytes),
    Binary(Bytes),
    /// A text frame that goes out as a message of its own, never joined
    /// with others (a unidirectional client reads one push per message).
    Whole(Utf8Bytes),
}

impl Frame {
    pub const fn from_static(text: &'static str) -> Self {
        Self::Text(Utf8Bytes::from_static(text))
    }

    pub fn len(&self) -> usize {
        match self {
            Self::Text(t) | Self::Whole(t) => t.len(),
            Self::Binary(b) => b.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn as_bytes(&self) -> &[u8] {
        match self {
            Self::Text(t) | Self::Whole(t) => t.as_bytes(),
            Self::Binary(b) => b,
        }
    }

    /// The text of a text frame.
    pub fn as_text(&self) -> Option<&str> {
        match self {
            Self::Text(t) | Self::Whole(t) => Some(t.as_str()),
            Self::Binary(_) => None,
        }
    }

    /// The frame as one that travels alone.
    fn whole(self) -> Self {
        match self {
            Self::Text(t) => Self::Whole(t),
            other => other,
        }
    }
}

/// `bytes` as a text [`Frame`]. Everything JSON encodes is UTF-8 (each part
/// of it was UTF-8 JSON when it arrived), so `None` means a bug, logged
/// here; the frame is not sent.
pub fn checked<B>(bytes: B) -> Option<Frame>
where
    Utf8Bytes: TryFrom<B, Error = std::str::Utf8Error>,
{
    match Utf8Bytes::try_from(bytes) {
        Ok(text) => Some(Frame::Text(text)),
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

/// Protocol v2's Protobuf format: a publication or a join/leave event as
/// one length-prefixed push, in one binary frame.
pub struct Protobuf;

impl Format<Publication> for Protobuf {
    type Frame = Frame;

    fn encode(publication: &Publication) -> Option<Frame> {
        Some(Frame::Binary(protobuf::encode_publication_push(
            publication,
        )))
    }
}

impl Format<PresenceEvent> for Protobuf {
    type Frame = Frame;

    fn encode(event: &PresenceEvent) -> Option<Frame> {
        Some(Frame::Binary(protobuf::encode_presence_push(event)))
    }
}

/// Protocol v2's JSON format on unidirectional transports: bare pushes
/// (`{"channel":..,"pub":{..}}`), one per message.
pub struct UniJson;

impl Format<Publication> for UniJson {
    type Frame = Frame;

    fn encode(publication: &Publication) -> Option<Frame> {
        checked(json::encode_uni_publication_push(publication)).map(Frame::whole)
    }
}

impl Format<PresenceEvent> for UniJson {
    type Frame = Frame;

    fn encode(event: &PresenceEvent) -> Option<Frame> {
        checked(json::encode_uni_presence_push(event)).map(Frame::whole)
    }
}

/// The format a connection speaks, chosen when it opens.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Encoding {
    #[default]
    Json,
    Protobuf,
    /// JSON on a unidirectional transport: the client sends its connect
    /// request and then only listens; pushes go out bare.
    UniJson,
    /// Protobuf on the unidirectional gRPC transport: frames as
    /// [`Encoding::Protobuf`] makes them (the transport turns each into the
    /// push it sends), but the client neither answers pings nor gets error
    /// replies.
    UniProtobuf,
}

impl Encoding {
    /// Whether the format carries publication data as text (JSON).
    pub fn is_text(self) -> bool {
        matches!(self, Encoding::Json | Encoding::UniJson)
    }

    /// The protocol's name as proxies tell the backend: `json` or
    /// `protobuf`.
    pub fn protocol_name(self) -> &'static str {
        match self {
            Encoding::Json | Encoding::UniJson => "json",
            Encoding::Protobuf | Encoding::UniProtobuf => "protobuf",
        }
    }

    /// The commands of one frame from the client, each read when reached.
    pub fn commands(
        self,
        frame: &[u8],
    ) -> Box<dyn Iterator<Item = Result<Command, DecodeError>> + Send + '_> {
        match self {
            Self::Json => Box::new(json::commands(frame)),
            Self::Protobuf | Self::UniProtobuf => Box::new(protobuf::commands(frame)),
            Self::UniJson => Box::new(std::iter::once(json::decode_connect_request(frame))),
        }
    }

    /// Whether the client answers pings (a unidirectional one cannot).
    pub fn pongs(self) -> bool {
        !self.unidirectional()
    }

    fn unidirectional(self) -> bool {
        matches!(self, Self::UniJson | Self::UniProtobuf)
    }

    /// Whether the client can get error replies (a unidirectional one is
    /// closed instead).
    pub fn replies_errors(self) -> bool {
        !self.unidirectional()
    }

    pub fn reply(self, id: u32, body: &ReplyBody) -> Option<Frame> {
        match self {
            Self::Json => checked(json::encode_reply(id, body)),
            // Connect is a unidirectional client's only command.
            Self::UniJson => match body {
                ReplyBody::Connect(r) => checked(json::encode_uni_connect(r)).map(Frame::whole),
                _ => None,
            },
            Self::Protobuf | Self::UniProtobuf => {
                Some(Frame::Binary(protobuf::encode_reply(id, body).into()))
            }
        }
    }

    pub fn error(self, id: u32, error: &ProtocolError) -> Option<Frame> {
        match self {
            Self::Json | Self::UniJson => checked(json::encode_error(id, error)),
            Self::Protobuf | Self::UniProtobuf => {
                Some(Frame::Binary(protobuf::encode_error(id, error).into()))
            }
        }
    }

    pub fn push(self, push: &Push) -> Option<Frame> {
        match self {
            Self::Json => checked(json::encode_push(push)),
            Self::UniJson => checked(json::encode_uni_push(push)).map(Frame::whole),
            Self::Protobuf | Self::UniProtobuf => {
                Some(Frame::Binary(protobuf::encode_push(push).into()))
            }
        }
    }

    /// The server's ping.
    pub fn ping(self) -> Frame {
        match self {
            Self::Json => Frame::from_static(json::PING),
            Self::UniJson => Frame::Whole(Utf8Bytes::from_static(json::PING)),
            Self::Protobuf | Self::UniProtobuf => Frame::Binary(Bytes::from_static(protobuf::PING)),
        }
    }

    /// A publication's push, made once per format and shared.
    pub fn publication(self, publication: &Publication) -> Option<Frame> {
        match self {
            Self::Json => publication.frame::<Json>(),
            Self::Protobuf | Self::UniProtobuf => publication.frame::<Protobuf>(),
            Self::UniJson => publication.frame::<UniJson>(),
        }
    }

    /// A join/leave event's push, made once per format and shared.
    pub fn presence(self, event: &PresenceEvent) -> Option<Frame> {
        match self {
            Self::Json => event.frame::<Json>(),
            Self::Protobuf | Self::UniProtobuf => event.frame::<Protobuf>(),
            Self::UniJson => event.frame::<UniJson>(),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;

    #[test]
    fn frames_are_checked_once_and_shared() {
        assert!(checked(Bytes::from_static(b"{\"a\":\"\xff\"}")).is_none());
        assert_eq!(
            checked(Bytes::from_static(b"{}")).unwrap(),
            Frame::from_static("{}")
        );
        let p = Publication::new(Arc::from("c"), Bytes::from_static(b"1"), None);
        let (a, b) = (p.frame::<Json>().unwrap(), p.frame::<Json>().unwrap());
        assert_eq!(
            a.as_text().unwrap(),
            r#"{"push":{"channel":"c","pub":{"data":1}}}"#
        );
        assert_eq!(
            a.as_text().unwrap().as_ptr(),
            b.as_text().unwrap().as_ptr(),
            "one buffer"
        );
        let bad = Publication::new(Arc::from("c"), Bytes::from_static(b"\"\xff\""), None);
        assert!(bad.frame::<Json>().is_none());
    }

    #[test]
    fn each_encoding_gets_its_own_shared_frame() {
        let p = Publication::new(Arc::from("c"), Bytes::from_static(b"1"), None);
        let json = Encoding::Json.publication(&p).unwrap();
        let proto = Encoding::Protobuf.publication(&p).unwrap();
        assert!(matches!(json, Frame::Text(_)));
        let Frame::Binary(bytes) = &proto else {
            panic!("Protobuf frames are binary");
        };
        let Frame::Binary(again) = Encoding::Protobuf.publication(&p).unwrap() else {
            unreachable!()
        };
        assert_eq!(bytes.as_ptr(), again.as_ptr(), "one buffer");
        assert_eq!(
            Encoding::Protobuf.ping(),
            Frame::Binary(Bytes::from_static(&[0]))
        );
    }
}
