//! This node's place in a cluster: its identity, the other nodes it has
//! heard from (the node list of `info`), commands aimed at users'
//! connections wherever they are, and what happens when its broker
//! reconnects. Its task acts on what the broker reports and announces the
//! node every `node.info_publish_interval`. What travels between nodes is
//! defined in [`crate::wire::control`].

use std::collections::{BTreeMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use herald_protocol::Disconnect;
use serde_json::value::RawValue;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::access::{Access, SaveError};
use crate::broker::{Broker, BrokerError, BrokerEvent};
use crate::channel::ChannelRules;
use crate::config::Config;
use crate::hub::{Client, Control, Hub, ServerSubscribe};
use crate::metrics::Counters;
use crate::wire::control::{AccessChange, Action, ControlMessage, NodeInfo, Question, Target};

mod registry;
mod survey;

use registry::Registry;

pub use survey::SURVEY_TIMEOUT;

pub struct Cluster {
    /// Unique id of this process run.
    uid: String,
    name: String,
    started: Instant,
    /// Whether other nodes may share channels (a broker other than memory).
    enabled: bool,
    announce_every: Duration,
    hub: Arc<Hub>,
    broker: Arc<dyn Broker>,
    rules: Arc<ChannelRules>,
    access: Arc<Access>,
    counters: Arc<Counters>,
    registry: Registry,
    surveys: survey::Surveys,
    /// Times the broker connection was lost and restored.
    reconnects: AtomicU64,
}

impl Cluster {
    pub fn new(
        config: &Config,
        hub: Arc<Hub>,
        broker: Arc<dyn Broker>,
        rules: Arc<ChannelRules>,
        access: Arc<Access>,
        counters: Arc<Counters>,
    ) -> Self {
        let name = if config.node.name.is_empty() {
            let host = gethostname::gethostname();
            format!("{}_{}", host.to_string_lossy(), config.http_server.port)
        } else {
            config.node.name.clone()
        };
        Self {
            uid: uuid::Uuid::new_v4().to_string(),
            name,
            started: Instant::now(),
            enabled: config.is_cluster(),
            announce_every: config.node.info_publish_interval.0,
            hub,
            broker,
            rules,
            access,
            counters,
            registry: Registry::default(),
            surveys: survey::Surveys::default(),
            reconnects: AtomicU64::new(0),
        }
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// This run's unique id.
    pub fn uid(&self) -> &str {
        &self.uid
    }

    /// This node as `info` lists it.
    pub fn info(&self) -> NodeInfo {
        NodeInfo {
            uid: self.uid.clone(),
            name: self.name.clone(),
            version: crate::VERSION.to_string(),
            num_clients: self.hub.num_clients() as u64,
            num_users: self.hub.num_users() as u64,
            num_channels: self.hub.num_channels() as u64,
            num_subs: self.hub.num_subscriptions() as u64,
            uptime: self.started.elapsed().as_secs(),
            num_publications: self.counters.publications.load(Ordering::Relaxed),
        }
    }

    /// This node and every other live node of the cluster.
    pub fn nodes(&self) -> Vec<NodeInfo> {
        let mut out = vec![self.info()];
        if self.enabled {
            out.extend(self.registry.alive(self.announce_every * 3));
        }
        out
    }

    /// Times the broker connection was lost and restored.
    pub fn reconnects(&self) -> u64 {
        self.reconnects.load(Ordering::Relaxed)
    }

    /// Acts on users' connections on this node and, in a cluster, sends the
    /// command to every other node.
    pub async fn user_command(&self, target: Target, action: Action) -> Result<(), BrokerError> {
        apply(&self.hub, &target, &action);
        if !self.enabled {
            return Ok(());
        }
        let message = ControlMessage::User {
            from: self.uid.clone(),
            target,
            action,
        };
        self.broker.publish_control(message.encode()).await
    }

    /// Makes an access change (saved first when its kind is persisted),
    /// acts on this node's connections and sends it to the other nodes.
    pub async fn access_change(&self, change: AccessChange) -> Result<(), AccessError> {
        self.access.save_and_apply(&change).await?;
        check_access(&self.hub, &change);
        if self.enabled {
            let message = ControlMessage::Access {
                from: self.uid.clone(),
                change,
            };
            self.broker.publish_control(message.encode()).await?;
        }
        Ok(())
    }

    /// Asks this node's connections that `changes` (rules learnt from
    /// storage) may concern to check themselves.
    pub fn recheck_access(&self, changes: &[AccessChange]) {
        for change in changes {
            check_access(&self.hub, change);
        }
    }

    /// The subscribers of the channels `question` names, over the whole
    /// cluster (a survey of the other nodes).
    pub async fn count(&self, question: Question) -> Result<BTreeMap<String, u64>, BrokerError> {
        Ok(survey::channels(self.survey(question).await?))
    }

    /// The same, this node's alone.
    pub fn count_here(&self, question: &Question) -> BTreeMap<String, u64> {
        survey::channels(vec![survey::answer(&self.hub, question)])
    }

    /// This node's answer to `question` and every other live node's.
    async fn survey(&self, question: Question) -> Result<Vec<survey::Answer>, BrokerError> {
        let mine = survey::answer(&self.hub, &question);
        let expected: HashSet<String> = match self.enabled {
            true => self.registry.surveyed(self.announce_every * 3),
            false => HashSet::new(),
        };
        if expected.is_empty() {
            return Ok(vec![mine]);
        }
        let pending = self.surveys.open();
        let message = ControlMessage::Survey {
            from: self.uid.clone(),
            id: pending.id,
            question,
        };
        self.broker.publish_control(message.encode()).await?;
        let mut answers = pending.gather(expected).await;
        answers.push(mine);
        Ok(answers)
    }

    /// Tells the subscribers of `channel` on every node that it has
    /// `count` subscribers, counted from `at` (Unix ms).
    pub async fn tell_count(&self, channel: &str, count: u64, at: i64) -> Result<(), BrokerError> {
        show_count(&self.hub, channel, count, at);
        if !self.enabled {
            return Ok(());
        }
        let message = ControlMessage::Count {
            from: self.uid.clone(),
            channel: channel.to_string(),
            count,
            at,
        };
        self.broker.publish_control(message.encode()).await
    }

    /// Tells the other nodes this one is leaving.
    pub async fn leave(&self) {
        if self.enabled {
            let message = ControlMessage::Leave {
                uid: self.uid.clone(),
            };
            let _ = self.broker.publish_control(message.encode()).await;
        }
    }

    /// The cluster task: acts on what the broker reports and announces the
    /// node while it is part of a cluster, until `stop`.
    pub async fn run(
        self: Arc<Self>,
        mut events: mpsc::Receiver<BrokerEvent>,
        stop: CancellationToken,
    ) {
        let mut ticker = tokio::time::interval(self.announce_every);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = ticker.tick(), if self.enabled => {
                    let message = ControlMessage::Node { info: self.info(), surveys: true };
                    if let Err(e) = self.broker.publish_control(message.encode()).await {
                        tracing::debug!(error = %crate::report::Chain(&e), "node announcement not sent");
                    }
                }
                event = events.recv() => match event {
                    None => return,
                    Some(BrokerEvent::Control(payload)) => self.on_control(&payload),
                    Some(BrokerEvent::Reconnected) => {
                        self.reconnects.fetch_add(1, Ordering::Relaxed);
                        tracing::info!("broker connection restored: subscribers with positions recover");
                        self.resync();
                    }
                },
            }
        }
    }

    fn on_control(&self, payload: &Bytes) {
        let message = match ControlMessage::decode(payload) {
            Ok(m) => m,
            Err(e) => {
                tracing::warn!(error = %e, "undecodable control message dropped");
                return;
            }
        };
        if message.sender() == self.uid {
            return;
        }
        match message {
            ControlMessage::Node { info, surveys } => self.registry.seen(info, surveys),
            ControlMessage::Leave { uid } => self.registry.forget(&uid),
            // Emulated commands concern one node: the others skip them.
            ControlMessage::User {
                action: Action::Emulate { node, .. },
                ..
            } if node != self.uid => {}
            ControlMessage::User { target, action, .. } => apply(&self.hub, &target, &action),
            // Answered in a task of its own: the hub is walked there, not
            // in this one.
            ControlMessage::Survey { from, id, question } => {
                let (hub, broker, uid) = (self.hub.clone(), self.broker.clone(), self.uid.clone());
                tokio::spawn(async move {
                    let answer = survey::answer(&hub, &question);
                    let parts = survey::split(answer, survey::PART_BYTES);
                    let count = parts.len() as u32;
                    for (part, answer) in (0..).zip(parts) {
                        let message = ControlMessage::Answer {
                            from: uid.clone(),
                            to: from.clone(),
                            id,
                            answer,
                            part,
                            parts: count,
                        };
                        if let Err(e) = broker.publish_control(message.encode()).await {
                            tracing::warn!(error = %crate::report::Chain(&e), "survey answer not sent");
                            return;
                        }
                    }
                });
            }
            // Answers concern the node that asked.
            ControlMessage::Answer { to, .. } if to != self.uid => {}
            ControlMessage::Answer {
                from,
                id,
                answer,
                part,
                parts,
                ..
            } => self
                .surveys
                .answered(id, survey::Part { from, part, parts }, answer),
            ControlMessage::Count {
                channel, count, at, ..
            } => show_count(&self.hub, &channel, count, at),
            ControlMessage::Access { change, .. } => {
                self.access.apply(&change);
                check_access(&self.hub, &change);
                if !self.access.is_persisted() {
                    return;
                }
                let access = self.access.clone();
                tokio::spawn(async move {
                    if let Err(e) = access.save(&change).await {
                        tracing::warn!(error = %crate::report::Chain(&e), "access rule from another node not saved");
                    }
                });
            }
        }
    }

    /// After the broker reconnected: subscribers of channels with streams
    /// resubscribe and recover what was published meanwhile.
    fn resync(&self) {
        self.hub.resync(|channel| {
            self.rules
                .resolve(channel)
                .is_ok_and(|r| self.rules.stream_options(r.options).is_some())
        });
    }
}

/// Applies a command to this node's connections.
fn apply(hub: &Hub, target: &Target, action: &Action) {
    let clients: Vec<Arc<dyn Client>> = if !target.session.is_empty() {
        hub.by_session(&target.session)
            .into_iter()
            .filter(|c| target.user.is_empty() || c.user() == target.user)
            .filter(|c| target.client.is_empty() || c.client_id() == target.client)
            .collect()
    } else if target.user.is_empty() {
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
        c.control(control(action));
    }
}

/// Hands a channel's count to its local subscribers that tell it (Pusher
/// sockets; the others would only be woken).
fn show_count(hub: &Hub, channel: &str, count: u64, at: i64) {
    let shared: Arc<str> = Arc::from(channel);
    for c in hub.subscribers_where(channel, |c| c.protocol() == "pusher") {
        c.control(Control::Count {
            channel: shared.clone(),
            count,
            at,
        });
    }
}

/// Asks the connections an access change may concern to check themselves.
fn check_access(hub: &Hub, change: &AccessChange) {
    let clients = match change {
        AccessChange::Unblock { .. } => return,
        AccessChange::Block { user, .. } | AccessChange::InvalidateUserTokens { user, .. } => {
            hub.user_clients(user)
        }
        // A token id names no user.
        AccessChange::RevokeToken { .. } => hub.all_clients(),
    };
    for c in clients {
        c.control(Control::CheckAccess);
    }
}

/// Why an access change was not made everywhere.
#[derive(Debug, thiserror::Error)]
pub enum AccessError {
    #[error(transparent)]
    Save(#[from] SaveError),
    #[error("access change not sent to the other nodes")]
    Broker(#[from] BrokerError),
}

/// What a command asks of one connection.
fn control(action: &Action) -> Control {
    match action {
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
            overrides,
            recover_since,
        } => Control::Subscribe(Box::new(ServerSubscribe {
            channel: channel.clone(),
            info: raw_bytes(info),
            data: raw_bytes(data),
            expire_at: *expire_at,
            overrides: *overrides,
            recover_since: recover_since.clone(),
        })),
        Action::Refresh {
            expired,
            expire_at,
            info,
        } => Control::Refresh {
            expired: *expired,
            expire_at: *expire_at,
            info: raw_bytes(info),
        },
        Action::Emulate { data, .. } => {
            use base64::Engine as _;
            let data = base64::engine::general_purpose::STANDARD.decode(data);
            Control::Emulate(data.map(Bytes::from).unwrap_or_default())
        }
    }
}

/// A raw JSON field as bytes (`null` never gets here: it reads as `None`).
fn raw_bytes(v: &Option<Box<RawValue>>) -> Option<Bytes> {
    v.as_ref()
        .map(|r| Bytes::copy_from_slice(r.get().as_bytes()))
}
