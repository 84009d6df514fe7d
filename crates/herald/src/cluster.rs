//! What nodes of a cluster tell each other besides publications: commands
//! aimed at users' connections wherever they are (disconnect, unsubscribe,
//! server-side subscribe, refresh), and periodic announcements that make up
//! the node list of `info`. Control messages are JSON on the broker's
//! control channel; each carries its sender's uid so a node skips its own.

pub mod wire;

use std::collections::HashMap;
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use bytes::Bytes;
use herald_protocol::Disconnect;
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use tokio::sync::mpsc;

use crate::hub::{Client, Control, Hub};
use crate::node::Node;

/// What a broker reports to its node's cluster task.
#[derive(Debug)]
pub enum ClusterEvent {
    Control(Bytes),
    Reconnected,
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
enum ControlMessage {
    /// A node is alive, with its figures.
    Node { info: NodeInfo },
    /// A node is shutting down.
    Leave { uid: String },
    User {
        from: String,
        target: Target,
        action: Action,
    },
}

impl ControlMessage {
    fn sender(&self) -> &str {
        match self {
            Self::Node { info } => &info.uid,
            Self::Leave { uid } => uid,
            Self::User { from, .. } => from,
        }
    }

    fn encode(&self) -> Bytes {
        Bytes::from(serde_json::to_vec(self).expect("control messages serialise"))
    }
}

/// Applies a command to this node's connections.
pub fn apply(hub: &Hub, target: &Target, action: &Action) {
    let clients: Vec<Arc<dyn Client>> = if target.user.is_empty() {
        hub.client(&target.client).into_iter().collect()
    } else {
        hub.user_clients(&target.user)
            .into_iter()
            .filter(|c| target.client.is_empty() || c.client_id() == target.client)
            .collect()
    };
    for c in clients {
        if target.whitelist.iter().any(|w| w == c.client_id()) {
            continue;
        }
        c.control(match action {
            Action::Disconnect { code, reason } => {
                Control::Disconnect(Disconnect::new(*code, reason.clone()))
            }
            Action::Unsubscribe { channel } => {
                let (code, reason) = herald_protocol::codes::unsubscribe::SERVER;
                Control::Unsubscribe {
                    channel: channel.clone(),
                    code,
                    reason: reason.into(),
                }
            }
            Action::Subscribe {
                channel,
                info,
                data,
                expire_at,
            } => Control::Subscribe {
                channel: channel.clone(),
                info: raw_bytes(info),
                data: raw_bytes(data),
                expire_at: *expire_at,
            },
            Action::Refresh {
                expired,
                expire_at,
                info,
            } => Control::Refresh {
                expired: *expired,
                expire_at: *expire_at,
                info: raw_bytes(info),
            },
        });
    }
}

/// A raw JSON field as bytes (`null` never gets here: it reads as `None`).
fn raw_bytes(v: &Option<Box<RawValue>>) -> Option<Bytes> {
    v.as_ref()
        .map(|r| Bytes::copy_from_slice(r.get().as_bytes()))
}

/// The other nodes this one has heard from recently.
#[derive(Default)]
pub struct Registry {
    nodes: Mutex<HashMap<String, (NodeInfo, Instant)>>,
}

impl Registry {
    fn seen(&self, info: NodeInfo) {
        self.nodes
            .lock()
            .insert(info.uid.clone(), (info, Instant::now()));
    }

    fn forget(&self, uid: &str) {
        self.nodes.lock().remove(uid);
    }

    /// Nodes heard from within `max_silence`, oldest entries dropped.
    pub fn alive(&self, max_silence: Duration) -> Vec<NodeInfo> {
        let mut nodes = self.nodes.lock();
        nodes.retain(|_, (_, seen)| seen.elapsed() <= max_silence);
        let mut out: Vec<NodeInfo> = nodes.values().map(|(i, _)| i.clone()).collect();
        out.sort_by(|a, b| a.name.cmp(&b.name));
        out
    }
}

pub fn encode_user_command(from: &str, target: Target, action: Action) -> Bytes {
    ControlMessage::User {
        from: from.to_string(),
        target,
        action,
    }
    .encode()
}

pub fn encode_leave(uid: &str) -> Bytes {
    ControlMessage::Leave {
        uid: uid.to_string(),
    }
    .encode()
}

pub fn encode_announcement(info: NodeInfo) -> Bytes {
    ControlMessage::Node { info }.encode()
}

/// The node's cluster task: acts on control messages and reconnections,
/// and announces the node every `node.info_publish_interval` while it is
/// part of a cluster. Ends with the node's shutdown.
pub async fn run(node: Weak<Node>, mut events: mpsc::UnboundedReceiver<ClusterEvent>) {
    let (interval, shutdown, announce) = match node.upgrade() {
        Some(n) => (
            n.config.node.info_publish_interval.0,
            n.shutdown.clone(),
            n.config.is_cluster(),
        ),
        None => return,
    };
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = ticker.tick(), if announce => {
                let Some(n) = node.upgrade() else { return };
                if let Err(e) = n.broker().publish_control(encode_announcement(n.info())).await {
                    tracing::debug!(error = %e, "node announcement not sent");
                }
            }
            event = events.recv() => {
                let Some(event) = event else { return };
                let Some(n) = node.upgrade() else { return };
                match event {
                    ClusterEvent::Control(payload) => on_control(&n, &payload),
                    ClusterEvent::Reconnected => {
                        crate::node::Counters::incr(&n.counters.broker_reconnects);
                        tracing::info!("broker connection restored: subscribers with positions recover");
                        n.resync_all();
                    }
                }
            }
        }
    }
}

fn on_control(node: &Node, payload: &[u8]) {
    let message: ControlMessage = match serde_json::from_slice(payload) {
        Ok(m) => m,
        Err(e) => {
            tracing::warn!(error = %e, "undecodable control message dropped");
            return;
        }
    };
    if message.sender() == node.uid {
        return;
    }
    match message {
        ControlMessage::Node { info } => node.registry.seen(info),
        ControlMessage::Leave { uid } => node.registry.forget(&uid),
        ControlMessage::User { target, action, .. } => apply(&node.hub, &target, &action),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn control_messages_round_trip() {
        let m = encode_user_command(
            "n1",
            Target {
                user: "u".into(),
                ..Default::default()
            },
            Action::Subscribe {
                channel: "news".into(),
                info: Some(RawValue::from_string("{\"a\":1}".into()).unwrap()),
                data: None,
                expire_at: Some(5),
            },
        );
        let back: ControlMessage = serde_json::from_slice(&m).unwrap();
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
    }

    #[test]
    fn silent_nodes_drop_out() {
        let r = Registry::default();
        let info = NodeInfo {
            uid: "a".into(),
            name: "a".into(),
            version: "0".into(),
            num_clients: 0,
            num_users: 0,
            num_channels: 0,
            num_subs: 0,
            uptime: 0,
        };
        r.seen(info.clone());
        assert_eq!(r.alive(Duration::from_secs(60)), vec![info]);
        assert!(r.alive(Duration::ZERO).is_empty());
    }
}
