//! The client protocols herald-bench speaks: Centrifugo client protocol v2
//! in JSON and in Protobuf (Herald's own), and the older v1 JSON (servers
//! built on the Go `centrifuge` library up to 0.17), so the same scenarios
//! can drive each side by side. Each knows how to write the few commands the
//! scenarios send and how to sort what comes back, one message at a time
//! (newline-separated JSON, or length-prefixed Protobuf).
//!
//! Sorting is done by scanning, not by parsing the whole message: at a
//! hundred thousand deliveries a second the load generator's own JSON
//! parsing would otherwise be what is measured. Only rare messages (replies,
//! unknown pushes) are parsed in full, by the client.

use bytes::Bytes;
use clap::ValueEnum;
use herald_protocol::protobuf::pb;
use prost::Message as _;
use tokio_tungstenite::tungstenite::Message;

mod ask;
mod pusher;
mod stamp;

pub use ask::Ask;

use stamp::number;
pub use stamp::Stamp;

/// The wire protocol of the server under test.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, ValueEnum)]
pub enum Protocol {
    /// Client protocol v2, JSON: `{"id":1,"connect":{…}}`, pushes
    /// `{"push":{"channel":…,"pub":{…}}}`, application pings `{}`.
    #[default]
    #[value(name = "centrifuge-v2-json")]
    V2Json,
    /// Client protocol v1, JSON: `{"id":1,"method":1,"params":{…}}`, replies
    /// `{"id":1,"result":{…}}`, pushes `{"result":{"channel":…,"data":{…}}}`,
    /// WebSocket-level pings.
    #[value(name = "centrifuge-v1-json")]
    V1Json,
    /// Client protocol v2, Protobuf (subprotocol `centrifuge-protobuf`):
    /// length-prefixed commands and replies in binary frames, empty replies
    /// as pings; payloads stay JSON.
    #[value(name = "centrifuge-v2-protobuf")]
    V2Protobuf,
    /// The Pusher Channels protocol 7 (`/app/<key>?protocol=7`): no connect
    /// command (the server's `pusher:connection_established` opens),
    /// `pusher:subscribe`, events whose `data` is a JSON string; pings are
    /// `pusher:ping`. Publications go through the Pusher HTTP API.
    #[value(name = "pusher")]
    Pusher,
}

/// The reply id of a Pusher acknowledgement (`connection_established`,
/// `subscription_succeeded`), which carries none: it answers whatever the
/// client waits for.
pub const PENDING: u32 = u32::MAX;

/// What one message from the server is, as far as a scanner can tell.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// A reply to command `id` (parse it for its result or error).
    Reply(u32),
    /// An application-level ping (v2 `{}`).
    Ping,
    /// A publication carrying a load-generator stamp.
    Stamped(Stamp),
    /// Any other push (parse it to see whether it is a disconnect or a
    /// publication without a stamp).
    Push,
    /// Something else; ignored.
    Other,
}

impl Protocol {
    pub fn name(self) -> &'static str {
        match self {
            Protocol::V2Json => "centrifuge-v2-json",
            Protocol::V1Json => "centrifuge-v1-json",
            Protocol::V2Protobuf => "centrifuge-v2-protobuf",
            Protocol::Pusher => "pusher",
        }
    }

    /// The WebSocket subprotocol to offer, if any.
    pub fn subprotocol(self) -> Option<&'static str> {
        (self == Protocol::V2Protobuf).then_some("centrifuge-protobuf")
    }

    /// A command as the message that carries it.
    fn message(
        self,
        json: impl FnOnce() -> String,
        proto: impl FnOnce() -> pb::Command,
    ) -> Message {
        match self {
            Protocol::V2Protobuf => Message::binary(proto().encode_length_delimited_to_vec()),
            _ => Message::text(json()),
        }
    }

    /// The connect command; an empty token sends none. Pusher has none.
    pub fn connect(self, id: u32, token: &str) -> Option<Message> {
        if self == Protocol::Pusher {
            return None;
        }
        Some(self.message(
            || self.connect_json(id, token),
            || pb::Command {
                id,
                connect: Some(pb::ConnectRequest {
                    token: token.into(),
                    name: "herald-bench".into(),
                    ..Default::default()
                }),
                ..Default::default()
            },
        ))
    }

    pub fn subscribe(self, id: u32, channel: &str) -> Message {
        self.message(
            || self.subscribe_json(id, channel),
            || pb::Command {
                id,
                subscribe: Some(pb::SubscribeRequest {
                    channel: channel.into(),
                    ..Default::default()
                }),
                ..Default::default()
            },
        )
    }

    /// A publish command; `data` must be JSON text.
    pub fn publish(self, id: u32, channel: &str, data: &str) -> Message {
        self.message(
            || self.publish_json(id, channel, data),
            || pb::Command {
                id,
                publish: Some(pb::PublishRequest {
                    channel: channel.into(),
                    data: Bytes::copy_from_slice(data.as_bytes()),
                }),
                ..Default::default()
            },
        )
    }

    /// The answer to a ping.
    pub fn pong(self) -> Message {
        match self {
            Protocol::V2Protobuf => Message::binary(vec![0]),
            Protocol::Pusher => Message::text("{\"event\":\"pusher:pong\",\"data\":{}}"),
            _ => Message::text("{}"),
        }
    }

    fn connect_json(self, id: u32, token: &str) -> String {
        let mut params = String::new();
        if !token.is_empty() {
            params = format!("\"token\":{}", quote(token));
        }
        match self {
            Protocol::V2Json | Protocol::V2Protobuf => {
                let sep = if params.is_empty() { "" } else { "," };
                format!("{{\"id\":{id},\"connect\":{{{params}{sep}\"name\":\"herald-bench\"}}}}")
            }
            // Method 0 (connect) is the default and is left out.
            Protocol::V1Json => format!("{{\"id\":{id},\"params\":{{{params}}}}}"),
            Protocol::Pusher => String::new(),
        }
    }

    fn subscribe_json(self, id: u32, channel: &str) -> String {
        match self {
            Protocol::V2Json | Protocol::V2Protobuf => {
                format!(
                    "{{\"id\":{id},\"subscribe\":{{\"channel\":{}}}}}",
                    quote(channel)
                )
            }
            Protocol::V1Json => format!(
                "{{\"id\":{id},\"method\":1,\"params\":{{\"channel\":{}}}}}",
                quote(channel)
            ),
            Protocol::Pusher => format!(
                "{{\"event\":\"pusher:subscribe\",\"data\":{{\"channel\":{}}}}}",
                quote(channel)
            ),
        }
    }

    fn publish_json(self, id: u32, channel: &str, data: &str) -> String {
        match self {
            Protocol::V2Json | Protocol::V2Protobuf => format!(
                "{{\"id\":{id},\"publish\":{{\"channel\":{},\"data\":{data}}}}}",
                quote(channel)
            ),
            Protocol::V1Json => format!(
                "{{\"id\":{id},\"method\":3,\"params\":{{\"channel\":{},\"data\":{data}}}}}",
                quote(channel)
            ),
            // A client event: no reply comes, so scenarios that publish
            // from clients do not run over Pusher.
            Protocol::Pusher => format!(
                "{{\"event\":\"client-bench\",\"channel\":{},\"data\":{data}}}",
                quote(channel)
            ),
        }
    }

    /// Sorts one message (one line of a frame).
    pub fn classify(self, msg: &str) -> Kind {
        let msg = msg.trim();
        if self == Protocol::Pusher {
            return pusher::classify(msg);
        }
        if let Some(rest) = msg.strip_prefix("{\"id\":") {
            return match number(rest).and_then(|(id, _)| u32::try_from(id).ok()) {
                Some(id) if id > 0 => Kind::Reply(id),
                _ => Kind::Other,
            };
        }
        let push_prefix = match self {
            Protocol::V2Json | Protocol::V2Protobuf => {
                if msg == "{}" {
                    return Kind::Ping;
                }
                "{\"push\":"
            }
            Protocol::V1Json => "{\"result\":",
            Protocol::Pusher => unreachable!("sorted above"),
        };
        if !msg.starts_with(push_prefix) {
            return Kind::Other;
        }
        match Stamp::find(msg) {
            Some(s) => Kind::Stamped(s),
            None => Kind::Push,
        }
    }
}

/// One Protobuf reply, sorted as [`Protocol::classify`] sorts JSON ones.
pub enum Sorted {
    Kind(Kind),
    /// A reply to a command, decoded.
    Reply(u32, Box<pb::Reply>),
    /// A disconnect push.
    Disconnect(u32, String),
}

/// Sorts one length-prefixed Protobuf reply's bytes (without the prefix).
pub fn classify_protobuf(bytes: &[u8]) -> Result<Sorted, prost::DecodeError> {
    let reply = pb::Reply::decode(bytes)?;
    if reply.id > 0 {
        return Ok(Sorted::Reply(reply.id, Box::new(reply)));
    }
    let Some(push) = reply.push else {
        return Ok(Sorted::Kind(if reply == pb::Reply::default() {
            Kind::Ping
        } else {
            Kind::Other
        }));
    };
    if let Some(d) = push.disconnect {
        return Ok(Sorted::Disconnect(d.code, d.reason));
    }
    Ok(Sorted::Kind(match push.r#pub {
        Some(p) => std::str::from_utf8(&p.data)
            .ok()
            .and_then(Stamp::find)
            .map_or(Kind::Push, Kind::Stamped),
        None => Kind::Other,
    }))
}

/// A JSON string literal for `s`.
pub fn quote(s: &str) -> String {
    serde_json::to_string(s).unwrap_or_else(|_| "\"\"".into())
}

#[cfg(test)]
mod tests {
    use super::stamp::fixture::{data, STAMP};
    use super::*;

    #[test]
    fn v2_messages() {
        let p = Protocol::V2Json;
        assert_eq!(
            text(p.connect(1, "").unwrap()),
            r#"{"id":1,"connect":{"name":"herald-bench"}}"#
        );
        assert_eq!(
            text(p.connect(1, "t").unwrap()),
            r#"{"id":1,"connect":{"token":"t","name":"herald-bench"}}"#
        );
        assert_eq!(
            text(p.subscribe(2, "a\"b")),
            r#"{"id":2,"subscribe":{"channel":"a\"b"}}"#
        );
        assert_eq!(
            text(p.publish(3, "c", "{}")),
            r#"{"id":3,"publish":{"channel":"c","data":{}}}"#
        );
        assert_eq!(
            text(p.ask(4, "c", Ask::Unsubscribe).unwrap()),
            r#"{"id":4,"unsubscribe":{"channel":"c"}}"#
        );
        assert_eq!(
            text(p.ask(5, "c", Ask::History { limit: 20 }).unwrap()),
            r#"{"id":5,"history":{"channel":"c","limit":20}}"#
        );
        assert_eq!(
            text(p.ask(6, "c", Ask::Presence).unwrap()),
            r#"{"id":6,"presence":{"channel":"c"}}"#
        );
        assert_eq!(p.classify(r#"{"id":4,"subscribe":{}}"#), Kind::Reply(4));
        assert_eq!(p.classify("{}"), Kind::Ping);
        let push = format!(
            r#"{{"push":{{"channel":"c","pub":{{"data":{},"offset":3}}}}}}"#,
            data()
        );
        assert_eq!(p.classify(&push), Kind::Stamped(STAMP));
        assert_eq!(
            p.classify(r#"{"push":{"disconnect":{"code":3001,"reason":"x"}}}"#),
            Kind::Push
        );
        assert_eq!(p.classify("garbage"), Kind::Other);
    }

    #[test]
    fn v1_messages() {
        let p = Protocol::V1Json;
        assert_eq!(text(p.connect(1, "").unwrap()), r#"{"id":1,"params":{}}"#);
        assert_eq!(
            text(p.subscribe(2, "x")),
            r#"{"id":2,"method":1,"params":{"channel":"x"}}"#
        );
        assert_eq!(
            text(p.publish(3, "x", "1")),
            r#"{"id":3,"method":3,"params":{"channel":"x","data":1}}"#
        );
        assert_eq!(
            text(p.ask(4, "x", Ask::Unsubscribe).unwrap()),
            r#"{"id":4,"method":2,"params":{"channel":"x"}}"#
        );
        assert_eq!(
            text(p.ask(5, "x", Ask::History { limit: 3 }).unwrap()),
            r#"{"id":5,"method":6,"params":{"channel":"x","use_limit":true,"limit":3}}"#
        );
        assert_eq!(
            text(p.ask(6, "x", Ask::Presence).unwrap()),
            r#"{"id":6,"method":4,"params":{"channel":"x"}}"#
        );
        assert_eq!(
            p.classify(r#"{"id":1,"result":{"client":"a"}}"#),
            Kind::Reply(1)
        );
        let push = format!(
            r#"{{"result":{{"channel":"x","data":{{"data":{}}}}}}}"#,
            data()
        );
        assert_eq!(p.classify(&push), Kind::Stamped(STAMP));
        // v1 has no application-level ping.
        assert_eq!(p.classify("{}"), Kind::Other);
    }

    fn text(m: Message) -> String {
        m.into_text().unwrap().to_string()
    }

    #[test]
    fn v2_protobuf_messages() {
        let p = Protocol::V2Protobuf;
        let Message::Binary(b) = p.publish(3, "c", "{}") else {
            panic!("binary");
        };
        let c = pb::Command::decode_length_delimited(&b[..]).unwrap();
        assert_eq!((c.id, &c.publish.unwrap().data[..]), (3, &b"{}"[..]));
        let Some(Message::Binary(b)) = p.ask(7, "c", Ask::History { limit: 5 }) else {
            panic!("binary");
        };
        let c = pb::Command::decode_length_delimited(&b[..]).unwrap();
        let h = c.history.unwrap();
        assert_eq!((c.id, h.channel.as_str(), h.limit), (7, "c", 5));
        assert!(matches!(
            classify_protobuf(&[]),
            Ok(Sorted::Kind(Kind::Ping))
        ));
        let push = pb::Reply {
            push: Some(pb::Push {
                channel: "c".into(),
                r#pub: Some(pb::Publication {
                    data: data().into(),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        };
        assert!(matches!(
            classify_protobuf(&push.encode_to_vec()),
            Ok(Sorted::Kind(Kind::Stamped(STAMP)))
        ));
        let reply = pb::Reply {
            id: 4,
            ..Default::default()
        };
        assert!(matches!(
            classify_protobuf(&reply.encode_to_vec()),
            Ok(Sorted::Reply(4, _))
        ));
        assert!(classify_protobuf(&[0xff]).is_err());
    }
}
