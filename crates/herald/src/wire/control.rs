//! Control messages: what nodes tell each other besides publications —
//! commands aimed at users' connections wherever they are (disconnect,
//! unsubscribe, server-side subscribe, refresh), periodic announcements that
//! make up the node list of `info`, and a node's goodbye. JSON on the
//! broker's control channel; each carries its sender's uid so that a node
//! skips its own.

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

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
}

/// Which connections a command acts on: all of a user's, or one client's.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Target {
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub user: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub client: String,
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
    },
    Refresh {
        expired: bool,
        #[serde(default)]
        expire_at: Option<i64>,
        #[serde(default)]
        info: Option<Box<RawValue>>,
    },
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ControlMessage {
    /// A node is alive, with its figures.
    Node { info: NodeInfo },
    /// A node is shutting down.
    Leave { uid: String },
    /// A command for users' connections.
    User {
        from: String,
        target: Target,
        action: Action,
    },
}

impl ControlMessage {
    /// The uid of the node that sent it.
    pub fn sender(&self) -> &str {
        match self {
            Self::Node { info } => &info.uid,
            Self::Leave { uid } => uid,
            Self::User { from, .. } => from,
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
            },
        }
        .encode();
        let back = ControlMessage::decode(&m).unwrap();
        assert_eq!(back.sender(), "n1");
        let ControlMessage::User { action, .. } = back else {
            panic!("not a user command");
        };
        let Action::Subscribe {
            info, expire_at, ..
        } = action
        else {
            panic!("not a subscribe");
        };
        assert_eq!(info.unwrap().get(), "{\"a\":1}");
        assert_eq!(expire_at, Some(5));
        assert!(ControlMessage::decode(b"{\"nope\":1}").is_err());
    }
}
