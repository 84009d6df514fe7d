//! The channel commands besides subscribe and publish that the chat
//! scenario sends: unsubscribe, history and presence, in each protocol.

use herald_protocol::protobuf::pb;
use tokio_tungstenite::tungstenite::Message;

use super::{quote, Protocol};

/// A channel command besides subscribe and publish, each answered by a
/// reply (the chat scenario's).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ask {
    Unsubscribe,
    /// The channel's newest `limit` publications.
    History {
        limit: u32,
    },
    /// Who is subscribed.
    Presence,
}

impl Protocol {
    /// One of the other channel commands ([`Ask`]); `None` when the
    /// protocol has no such command (Pusher's presence and history).
    pub fn ask(self, id: u32, channel: &str, what: Ask) -> Option<Message> {
        let json = self.ask_json(id, channel, what)?;
        Some(self.message(
            || json,
            || {
                let channel = channel.to_owned();
                let mut c = pb::Command {
                    id,
                    ..Default::default()
                };
                match what {
                    Ask::Unsubscribe => c.unsubscribe = Some(pb::UnsubscribeRequest { channel }),
                    Ask::Presence => c.presence = Some(pb::PresenceRequest { channel }),
                    Ask::History { limit } => {
                        c.history = Some(pb::HistoryRequest {
                            channel,
                            limit: i32::try_from(limit).unwrap_or(i32::MAX),
                            ..Default::default()
                        })
                    }
                }
                c
            },
        ))
    }

    fn ask_json(self, id: u32, channel: &str, what: Ask) -> Option<String> {
        let channel = quote(channel);
        Some(match self {
            Protocol::V2Json | Protocol::V2Protobuf => {
                let (name, more) = match what {
                    Ask::Unsubscribe => ("unsubscribe", String::new()),
                    Ask::Presence => ("presence", String::new()),
                    Ask::History { limit } => ("history", format!(",\"limit\":{limit}")),
                };
                format!("{{\"id\":{id},\"{name}\":{{\"channel\":{channel}{more}}}}}")
            }
            Protocol::V1Json => {
                let (method, more) = match what {
                    Ask::Unsubscribe => (2, String::new()),
                    Ask::Presence => (4, String::new()),
                    Ask::History { limit } => (6, format!(",\"use_limit\":true,\"limit\":{limit}")),
                };
                format!("{{\"id\":{id},\"method\":{method},\"params\":{{\"channel\":{channel}{more}}}}}")
            }
            Protocol::Pusher => match what {
                Ask::Unsubscribe => format!(
                    "{{\"event\":\"pusher:unsubscribe\",\"data\":{{\"channel\":{channel}}}}}"
                ),
                Ask::Presence | Ask::History { .. } => return None,
            },
        })
    }
}
