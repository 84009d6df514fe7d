//! Control messages: what nodes tell each other besides publications —
//! commands aimed at users' connections wherever they are (disconnect,
//! unsubscribe, server-side subscribe, refresh), periodic announcements that
//! make up the node list of `info`, a node's goodbye, and surveys (a
//! question every node answers: its channels, say). JSON on the
//! broker's control channel; each carries its sender's uid so that a node
//! skips its own.

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use crate::auth::Overrides;

/// A position in a channel's stream.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct Position {
    pub offset: u64,
    pub epoch: String,
}

/// One node as `info` lists it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct NodeInfo {
    pub uid: String,
    pub name: String,
    pub version: String,
    pub num_clients: u64,
    pub num_users: u64,
    pub num_channels: u64,
    pub num_subs: u64,
    pub uptime: u64,
    /// Herald: publications accepted by the node since it started (a
    /// counter: its rate is the node's publications per second).
    #[serde(default)]
    pub num_publications: u64,
}

/// Which connections a command acts on: all of a user's, or one client's
/// or session's.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Target {
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub user: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub client: String,
    /// Only the connection with this session (none has one but those of
    /// the emulated transports, `http_stream` and `sse`).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub session: String,
    /// Client ids left alone.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub whitelist: Vec<String>,
}

/// What to do to the targeted connections.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Action {
    Disconnect {
        code: u16,
        reason: String,
    },
    Unsubscribe {
        channel: String,
    },
    Subscribe {
        channel: String,
        #[serde(default)]
        info: Option<Box<RawValue>>,
        #[serde(default)]
        data: Option<Box<RawValue>>,
        #[serde(default)]
        expire_at: Option<i64>,
        #[serde(default, rename = "override")]
        overrides: Overrides,
        /// Recover from this position, when the channel keeps a stream.
        #[serde(default)]
        recover_since: Option<Position>,
    },
    Refresh {
        expired: bool,
        #[serde(default)]
        expire_at: Option<i64>,
        #[serde(default)]
        info: Option<Box<RawValue>>,
    },
    /// Commands for an emulated connection on node `node` (the target
    /// names its session), base64; every other node drops it unread.
    Emulate {
        node: String,
        data: String,
    },
}

/// A change to who may connect and which tokens still count: user blocking
/// and token revocation. Times are Unix seconds; an `expire_at` of 0 never
/// ends.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum AccessChange {
    /// The user's connections close and new ones are refused.
    Block {
        user: String,
        expire_at: i64,
    },
    Unblock {
        user: String,
    },
    /// Tokens with this `jti` no longer count.
    RevokeToken {
        uid: String,
        expire_at: i64,
    },
    /// The user's tokens issued before `issued_before` no longer count:
    /// connection tokens when `channel` is empty, else subscription tokens
    /// of that channel.
    InvalidateUserTokens {
        user: String,
        #[serde(default, skip_serializing_if = "String::is_empty")]
        channel: String,
        issued_before: i64,
        expire_at: i64,
    },
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ControlMessage {
    /// A node is alive, with its figures; `surveys`: it answers surveys
    /// (nodes of older versions, in a rolling upgrade, do not, and are not
    /// waited for).
    Node {
        info: NodeInfo,
        #[serde(default)]
        surveys: bool,
    },
    /// A node is shutting down.
    Leave { uid: String },
    /// A command for users' connections.
    User {
        from: String,
        target: Target,
        action: Action,
    },
    /// A user blocked or unblocked, a token revoked.
    Access { from: String, change: AccessChange },
    /// A question for every other node; each answers the sender.
    Survey {
        from: String,
        id: u64,
        question: Question,
    },
    /// A node's answer to survey `id` of node `to`, or part `part` of it
    /// (of `parts`: a long answer goes in parts, each well under a broker's
    /// message limit); every other node drops it unread.
    Answer {
        from: String,
        to: String,
        id: u64,
        answer: Answer,
        #[serde(default)]
        part: u32,
        #[serde(default = "one")]
        parts: u32,
    },
    /// How many subscribers `channel` has over the cluster, for its Pusher
    /// sockets (subscription counting), as counted from `at` (Unix ms):
    /// of two counts that cross, the later one stands.
    Count {
        from: String,
        channel: String,
        count: u64,
        #[serde(default)]
        at: i64,
    },
}

fn one() -> u32 {
    1
}

/// What a survey asks of each node.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Question {
    /// The channels with subscribers on the node whose names start with
    /// `prefix`, and how many each has there.
    Channels { prefix: String },
    /// How many subscribers each of these channels has on the node (those
    /// with any).
    Subscribers { channels: Vec<String> },
}

/// A node's answer to a [`Question`].
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Answer {
    /// Channels and their subscribers on the node.
    Channels { channels: Vec<(String, u64)> },
}

impl ControlMessage {
    /// The uid of the node that sent it.
    pub fn sender(&self) -> &str {
        match self {
            Self::Node { info, .. } => &info.uid,
            Self::Leave { uid } => uid,
            Self::User { from, .. }
            | Self::Access { from, .. }
            | Self::Survey { from, .. }
            | Self::Answer { from, .. }
            | Self::Count { from, .. } => from,
        }
    }

    pub fn encode(&self) -> Bytes {
        Bytes::from(serde_json::to_vec(self).expect("control messages serialise"))
    }

    pub fn decode(payload: &[u8]) -> Result<Self, serde_json::Error> {
        serde_json::from_slice(payload)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn control_messages_round_trip() {
        let m = ControlMessage::User {
            from: "n1".into(),
            target: Target {
                user: "u".into(),
                ..Default::default()
            },
            action: Action::Subscribe {
                channel: "news".into(),
                info: Some(RawValue::from_string("{\"a\":1}".into()).unwrap()),
                data: None,
                expire_at: Some(5),
                overrides: Overrides {
                    presence: Some(true),
                    ..Default::default()
                },
                recover_since: Some(Position {
                    offset: 7,
                    epoch: "e".into(),
                }),
            },
        }
        .encode();
        let back = ControlMessage::decode(&m).unwrap();
        assert_eq!(back.sender(), "n1");
        let ControlMessage::User { action, .. } = back else {
            panic!("not a user command");
        };
        let Action::Subscribe {
            info,
            expire_at,
            overrides,
            recover_since,
            ..
        } = action
        else {
            panic!("not a subscribe");
        };
        assert_eq!(info.unwrap().get(), "{\"a\":1}");
        assert_eq!(expire_at, Some(5));
        assert_eq!(overrides.presence, Some(true));
        assert_eq!(recover_since.map(|p| p.offset), Some(7));
        // What a node before these fields sent still reads.
        let old = br#"{"user":{"from":"n0","target":{"user":"u"},"action":{"subscribe":{"channel":"c"}}}}"#;
        assert!(ControlMessage::decode(old).is_ok());
        assert!(ControlMessage::decode(b"{\"nope\":1}").is_err());

        let count = ControlMessage::Count {
            from: "n2".into(),
            channel: "app:news".into(),
            count: 3,
            at: 1700000000000,
        };
        let text = String::from_utf8(count.encode().to_vec()).unwrap();
        assert_eq!(
            text,
            r#"{"count":{"from":"n2","channel":"app:news","count":3,"at":1700000000000}}"#
        );
        assert_eq!(
            ControlMessage::decode(text.as_bytes()).unwrap().sender(),
            "n2"
        );
    }
}
