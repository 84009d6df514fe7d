//! The node: everything one Herald process shares between its connections and
//! its API — configuration, channel rules, token verifiers, the hub, the
//! broker, counters and the shutdown signal.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use herald_protocol::{ClientInfo, PresenceEvent, ProtocolError, Publication};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::auth::Verifier;
use crate::broker::{Broker, BrokerError, Inbound, MemoryBroker, NatsBroker, RedisBroker};
use crate::channel::ChannelRules;
use crate::cluster::{self, Action, ClusterEvent, NodeInfo, Registry, Target};
use crate::config::{BrokerKind, ChannelOptions, Config, ConfigError, HistoryStorage};
use crate::hub::{Fill, Hub};
use crate::origin::OriginPolicy;
use crate::presence::{self, Members, Presence, RedisPresence};
use crate::store::{
    open_durable, Deliver, DurableStore, HistoryPage, HistoryQuery, MemoryStore, RedisStore, Store,
    StoreError, StreamOptions,
};

/// Where a publication landed in its channel's stream (zero without history).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PublishResult {
    pub offset: u64,
    pub epoch: String,
}

/// Counters exposed at `/metrics` and in `info`.
#[derive(Debug, Default)]
pub struct Counters {
    pub publications: AtomicU64,
    pub slow_disconnects: AtomicU64,
    pub connections_accepted: AtomicU64,
    pub commands: AtomicU64,
    pub api_requests: AtomicU64,
    /// Times the broker connection was lost and restored.
    pub broker_reconnects: AtomicU64,
}

impl Counters {
    pub fn incr(c: &AtomicU64) {
        c.fetch_add(1, Ordering::Relaxed);
    }
}

pub struct Node {
    pub config: Config,
    pub rules: Arc<ChannelRules>,
    pub hub: Arc<Hub>,
    broker: Arc<dyn Broker>,
    /// Streams of memory-history namespaces: in this process, or in Redis
    /// for a Redis-brokered cluster.
    history_store: Arc<dyn Store>,
    memory_store: Option<Arc<MemoryStore>>,
    durable_store: Option<DurableStore>,
    /// This node's own presence entries.
    pub presence: Presence,
    /// Presence shared by a cluster.
    shared_presence: Option<RedisPresence>,
    /// The other nodes of the cluster.
    pub registry: Registry,
    pub connection_tokens: Verifier,
    pub subscription_tokens: Verifier,
    pub counters: Counters,
    pub shutdown: CancellationToken,
    /// Tracks connection tasks so shutdown can wait for them.
    pub tracker: TaskTracker,
    pub origins: OriginPolicy,
    pub name: String,
    /// Unique id of this process run.
    pub uid: String,
    pub started: Instant,
    next_key: AtomicU64,
}

/// Why a node could not start.
#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("cannot open durable storage")]
    Storage(#[from] StoreError),
    #[error("cannot join the cluster")]
    Broker(#[from] BrokerError),
}

impl Node {
    /// Builds the node: connects to the cluster's broker and presence
    /// manager if configured, and opens durable storage when a namespace
    /// uses it.
    pub async fn open(config: Config) -> Result<Arc<Self>, NodeError> {
        let hub = Arc::new(Hub::new());
        let shutdown = CancellationToken::new();
        let (events, events_rx) = tokio::sync::mpsc::unbounded_channel::<ClusterEvent>();
        let inbound = Inbound::new(hub.clone(), events);
        let mut redis_shards = None;
        let broker: Arc<dyn Broker> = match config.broker_kind() {
            BrokerKind::Memory => Arc::new(MemoryBroker::new(hub.clone())),
            BrokerKind::Redis => {
                let b =
                    RedisBroker::connect(config.broker_redis(), inbound, shutdown.child_token())
                        .await?;
                redis_shards = Some(b.shards().clone());
                Arc::new(b)
            }
            BrokerKind::Nats => Arc::new(
                NatsBroker::connect(&config.broker.nats, inbound, shutdown.child_token()).await?,
            ),
        };
        let to_broker = broker.clone();
        let deliver: Deliver = Arc::new(move |p| to_broker.publish(p));
        let (history_store, memory_store): (Arc<dyn Store>, _) = match &redis_shards {
            Some(shards) => (Arc::new(RedisStore::new(shards.clone())), None),
            None => {
                let m = Arc::new(MemoryStore::new(deliver.clone()));
                (m.clone(), Some(m))
            }
        };
        let shared_presence = match config.presence_redis() {
            None => None,
            Some(cfg) => {
                let shards = match &redis_shards {
                    Some(shards) if std::ptr::eq(cfg, config.broker_redis()) => shards.clone(),
                    _ => crate::broker::RedisShards::connect(cfg).await?,
                };
                Some(RedisPresence::new(shards, cfg.presence_ttl.0))
            }
        };
        let stores = (history_store, memory_store, shared_presence);
        let mut node = Self::build(config, hub, broker, stores, shutdown)?;
        if node.config.channel.uses_durable_history() {
            let rules = node.rules.clone();
            let opts_for = Arc::new(move |channel: &str| rules.stream_options_for(channel));
            let dir = std::path::PathBuf::from(&node.config.data_dir);
            node.durable_store =
                Some(open_durable(&node.config.storage, &dir, deliver, opts_for).await?);
        }
        let node = Arc::new(node);
        let weak = Arc::downgrade(&node);
        node.hub.set_filler(Arc::new(move |fill: Fill| {
            let weak = weak.clone();
            tokio::spawn(async move {
                let Some(node) = weak.upgrade() else { return };
                let found = node
                    .stream_after(&fill.channel, fill.after, fill.epoch.clone())
                    .await;
                node.hub.finish_fill(fill, found);
            });
        }));
        tokio::spawn(cluster::run(Arc::downgrade(&node), events_rx));
        if let Some(interval) = node.shared_presence.as_ref().map(|p| p.refresh_interval()) {
            tokio::spawn(refresh_presence(Arc::downgrade(&node), interval));
        }
        Ok(node)
    }

    /// Flushes and closes durable storage; call once at shutdown.
    pub async fn close_storage(&self) {
        if let Some(d) = &self.durable_store {
            d.close().await;
        }
    }

    /// Durable publications removed by retention so far.
    pub fn retention_removed(&self) -> u64 {
        self.durable_store
            .as_ref()
            .map_or(0, DurableStore::removed_total)
    }

    fn build(
        config: Config,
        hub: Arc<Hub>,
        broker: Arc<dyn Broker>,
        (history_store, memory_store, shared_presence): (
            Arc<dyn Store>,
            Option<Arc<MemoryStore>>,
            Option<RedisPresence>,
        ),
        shutdown: CancellationToken,
    ) -> Result<Self, ConfigError> {
        let connection_tokens = Verifier::from_config(&config.client.token, "client.token")?;
        let subscription_tokens = if config.client.subscription_token.enabled {
            Verifier::from_config(
                &config.client.subscription_token.token,
                "client.subscription_token",
            )?
        } else {
            connection_tokens.clone()
        };
        let name = if config.node.name.is_empty() {
            format!("{}_{}", hostname(), config.http_server.port)
        } else {
            config.node.name.clone()
        };
        Ok(Self {
            rules: Arc::new(ChannelRules::new(&config.channel, config.client.insecure)),
            hub,
            broker,
            history_store,
            memory_store,
            durable_store: None,
            presence: Presence::new(),
            shared_presence,
            registry: Registry::default(),
            connection_tokens,
            subscription_tokens,
            counters: Counters::default(),
            shutdown,
            tracker: TaskTracker::new(),
            origins: OriginPolicy::new(&config.client.allowed_origins),
            name,
            uid: uuid::Uuid::new_v4().to_string(),
            started: Instant::now(),
            next_key: AtomicU64::new(1),
            config,
        })
    }

    /// A fresh process-unique key for a connection.
    pub fn next_key(&self) -> u64 {
        self.next_key.fetch_add(1, Ordering::Relaxed)
    }

    /// Stream retention for a namespace, or `None` when it keeps no history.
    pub fn stream_options(&self, o: &ChannelOptions) -> Option<StreamOptions> {
        self.rules.stream_options(o)
    }

    fn store_for(&self, o: &ChannelOptions) -> Result<&dyn Store, ProtocolError> {
        match o.history_storage {
            HistoryStorage::Memory => Ok(&*self.history_store),
            // Opened at start whenever a namespace is durable.
            HistoryStorage::Durable => self
                .durable_store
                .as_ref()
                .map(|d| d as &dyn Store)
                .ok_or(ProtocolError::INTERNAL),
        }
    }

    /// Publishes `data` (raw JSON) into `channel`. With history, the
    /// publication is appended to the channel's stream (and for durable
    /// streams committed) before this returns its position.
    pub async fn publish(
        &self,
        channel: &str,
        data: Bytes,
        info: Option<Arc<ClientInfo>>,
        tags: BTreeMap<String, String>,
    ) -> Result<PublishResult, ProtocolError> {
        let options = self.rules.resolve(channel)?.options;
        let publication = Publication::new(Arc::from(channel), data, info).with_tags(tags);
        let result = match self.stream_options(options) {
            Some(opts) => {
                let stored = self
                    .store_for(options)?
                    .append(publication, opts)
                    .await
                    .map_err(|e| {
                        tracing::warn!(channel, error = %e, "publish failed");
                        match e {
                            StoreError::Broker(_) => ProtocolError::BROKER_UNAVAILABLE,
                            _ => ProtocolError::INTERNAL,
                        }
                    })?;
                PublishResult {
                    offset: stored.offset,
                    epoch: stored.epoch.as_deref().unwrap_or_default().to_owned(),
                }
            }
            None => {
                self.broker
                    .publish(Arc::new(publication))
                    .await
                    .map_err(|e| {
                        tracing::warn!(channel, error = %e, "publish failed");
                        ProtocolError::BROKER_UNAVAILABLE
                    })?;
                PublishResult::default()
            }
        };
        Counters::incr(&self.counters.publications);
        Ok(result)
    }

    /// Reads a channel's stream: 108 when the namespace keeps no history,
    /// 112 when `since` names a lost epoch.
    pub async fn history(
        &self,
        channel: &str,
        query: HistoryQuery,
    ) -> Result<HistoryPage, ProtocolError> {
        let options = self.rules.resolve(channel)?.options;
        let opts = self
            .stream_options(options)
            .ok_or(ProtocolError::NOT_AVAILABLE)?;
        self.store_for(options)?
            .history(channel, query, opts)
            .await
            .map_err(|e| match e {
                StoreError::Unrecoverable => ProtocolError::UNRECOVERABLE_POSITION,
                e => {
                    tracing::warn!(channel, error = %e, "history failed");
                    ProtocolError::INTERNAL
                }
            })
    }

    /// The publications of a channel's stream after `after` (at most the
    /// recovery limit), to fill a gap in live delivery; `None` when the
    /// stream is no longer in `epoch` (or, without one, cannot be read).
    async fn stream_after(
        &self,
        channel: &str,
        after: u64,
        epoch: Option<Arc<str>>,
    ) -> Option<Vec<Arc<Publication>>> {
        let epoch = match epoch {
            Some(e) => e.to_string(),
            None => {
                let top = self.history(channel, HistoryQuery::default()).await.ok()?;
                top.position.epoch
            }
        };
        let limit = match self.config.client.recovery_max_publication_limit {
            0 => 10_000,
            n => n,
        };
        let query = HistoryQuery {
            since: Some(crate::store::StreamPosition {
                offset: after,
                epoch,
            }),
            limit: Some(limit),
            reverse: false,
        };
        Some(self.history(channel, query).await.ok()?.publications)
    }

    pub async fn remove_history(&self, channel: &str) -> Result<(), ProtocolError> {
        let options = self.rules.resolve(channel)?.options;
        self.stream_options(options)
            .ok_or(ProtocolError::NOT_AVAILABLE)?;
        self.store_for(options)?.remove(channel).await.map_err(|e| {
            tracing::warn!(channel, error = %e, "history remove failed");
            ProtocolError::INTERNAL
        })
    }

    /// Announces a join or leave to the channel's subscribers on every node.
    pub async fn presence_event(&self, channel: &str, info: Arc<ClientInfo>, join: bool) {
        let event = Arc::new(PresenceEvent::new(Arc::from(channel), info, join));
        if let Err(e) = self.broker.publish_presence(event).await {
            tracing::warn!(channel, error = %e, "join/leave event lost");
        }
    }

    /// Forgets idle memory streams; run periodically.
    pub fn sweep_streams(&self) {
        if let Some(m) = &self.memory_store {
            m.sweep(|channel| self.rules.stream_options_for(channel));
        }
    }

    /// Makes the broker's subscription to `channel` match the hub; call
    /// after the channel's first local subscriber joined or its last left.
    pub async fn broker_sync(&self, channel: &str) {
        if let Err(e) = self.broker.sync_channel(channel).await {
            tracing::warn!(channel, error = %e, "broker subscription not updated");
        }
    }

    pub fn broker(&self) -> &Arc<dyn Broker> {
        &self.broker
    }

    /// Acts on users' connections on this node and, in a cluster, sends the
    /// command to every other node.
    pub async fn user_command(&self, target: Target, action: Action) -> Result<(), ProtocolError> {
        cluster::apply(&self.hub, &target, &action);
        if !self.config.is_cluster() {
            return Ok(());
        }
        let message = cluster::encode_user_command(&self.uid, target, action);
        self.broker.publish_control(message).await.map_err(|e| {
            tracing::warn!(error = %e, "command not sent to the other nodes");
            ProtocolError::BROKER_UNAVAILABLE
        })
    }

    /// This node as `info` lists it.
    pub fn info(&self) -> NodeInfo {
        NodeInfo {
            uid: self.uid.clone(),
            name: self.name.clone(),
            version: Self::version().to_string(),
            num_clients: self.hub.num_clients() as u64,
            num_users: self.hub.num_users() as u64,
            num_channels: self.hub.num_channels() as u64,
            num_subs: self.hub.num_subscriptions() as u64,
            uptime: self.started.elapsed().as_secs(),
        }
    }

    /// This node and every other live node of the cluster.
    pub fn nodes(&self) -> Vec<NodeInfo> {
        let mut out = vec![self.info()];
        if self.config.is_cluster() {
            out.extend(
                self.registry
                    .alive(self.config.node.info_publish_interval.0 * 3),
            );
        }
        out
    }

    /// Tells the other nodes this one is leaving.
    pub async fn leave_cluster(&self) {
        if self.config.is_cluster() {
            let _ = self
                .broker
                .publish_control(cluster::encode_leave(&self.uid))
                .await;
        }
    }

    /// After the broker reconnected: subscribers of channels with streams
    /// resubscribe and recover what was published meanwhile.
    pub fn resync_all(&self) {
        self.hub.resync(|channel| {
            self.rules
                .resolve(channel)
                .is_ok_and(|r| self.rules.stream_options(r.options).is_some())
        });
    }

    /// Adds a client to a channel's presence (here and, in a cluster, in
    /// the shared presence).
    pub async fn presence_add(&self, channel: &str, info: Arc<ClientInfo>) {
        self.presence.add(channel, info.clone());
        if let Some(shared) = &self.shared_presence {
            if let Err(e) = shared.add(channel, &info).await {
                tracing::warn!(channel, error = %e, "shared presence not updated");
            }
        }
    }

    pub async fn presence_remove(&self, channel: &str, client: &str) {
        self.presence.remove(channel, client);
        if let Some(shared) = &self.shared_presence {
            if let Err(e) = shared.remove(channel, client).await {
                tracing::warn!(channel, error = %e, "shared presence not updated");
            }
        }
    }

    /// Who is in a channel, across the cluster.
    pub async fn presence_get(&self, channel: &str) -> Result<Members, ProtocolError> {
        match &self.shared_presence {
            None => Ok(self.presence.get(channel)),
            Some(shared) => shared.get(channel).await.map_err(|e| {
                tracing::warn!(channel, error = %e, "presence read failed");
                ProtocolError::INTERNAL
            }),
        }
    }

    /// Clients and distinct users in a channel, across the cluster.
    pub async fn presence_stats(&self, channel: &str) -> Result<(u32, u32), ProtocolError> {
        match &self.shared_presence {
            None => Ok(self.presence.stats(channel)),
            Some(_) => Ok(presence::stats(&self.presence_get(channel).await?)),
        }
    }

    pub fn version() -> &'static str {
        env!("CARGO_PKG_VERSION")
    }
}

/// Keeps this node's entries alive in shared presence until shutdown.
async fn refresh_presence(node: std::sync::Weak<Node>, interval: std::time::Duration) {
    let mut tick = tokio::time::interval(interval);
    tick.tick().await;
    loop {
        let Some(n) = node.upgrade() else { return };
        let stop = n.shutdown.clone();
        drop(n);
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tick.tick() => {}
        }
        let Some(n) = node.upgrade() else { return };
        let Some(shared) = &n.shared_presence else {
            return;
        };
        let entries = n.presence.all();
        // All queued at once: one pipeline, not one round trip per entry.
        let added = futures_util::future::join_all(
            entries
                .iter()
                .map(|(channel, info)| shared.add(channel, info)),
        )
        .await;
        if let Some(Err(e)) = added.into_iter().find(Result::is_err) {
            tracing::warn!(error = %e, "presence refresh failed");
        }
        // A client that left while the refresh was under way must not stay.
        let gone: Vec<_> = entries
            .iter()
            .filter(|(channel, info)| !n.presence.contains(channel, &info.client))
            .collect();
        for (channel, info) in gone {
            let _ = shared.remove(channel, &info.client).await;
        }
    }
}

fn hostname() -> String {
    std::fs::read_to_string("/etc/hostname")
        .map(|s| s.trim().to_string())
        .ok()
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "herald".into())
}
