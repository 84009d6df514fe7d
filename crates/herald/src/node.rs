//! The node: what one Herald process shares between its connections and its
//! API — configuration, channel rules, token verifiers, the hub, the engine
//! (broker, streams, presence), its place in the cluster, counters and the
//! shutdown signal — assembled by [`Node::open`] from typed configuration.
//! It routes each publication and history read to the store of the
//! channel's namespace.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

use bytes::Bytes;
use herald_protocol::{json, ClientInfo, PresenceEvent, ProtocolError, Publication};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::access::{self, Access};
use crate::auth::Verifier;
use crate::broker::Inbound;
use crate::channel::ChannelRules;
use crate::cluster::Cluster;
use crate::config::{BrokerKind, ChannelOptions, ClientConfig, Config, ConfigError, PUSH_ROOM};
use crate::engine::{Engine, EngineError};
use crate::hub::{Fill, Hub, MAX_HELD};
use crate::idempotency;
use crate::metrics::{Counters, Metrics};
use crate::origin::OriginPolicy;
use crate::presence::{Members, Presence};
use crate::proxy::Proxies;
use crate::ratelimit::{ConnectLimits, Limiter, PerKey};
use crate::store::{
    Conditions, HistoryPage, HistoryQuery, Once, Store, StoreError, StreamOptions, StreamPosition,
    Version,
};
use crate::webhook::{self, Webhooks};
use crate::wire::control::{Action, NodeInfo, Target};

/// What brokers may report to the node before it has read them (see
/// [`Inbound`]): control messages, reconnections.
const BROKER_EVENTS: usize = 1024;

/// How [`Node::publish`] publishes.
#[derive(Debug, Default)]
pub struct PublishOptions {
    /// The publisher, when a client publishes.
    pub info: Option<Arc<ClientInfo>>,
    pub tags: BTreeMap<String, String>,
    /// Deliver without appending to the channel's stream: no offset.
    pub skip_history: bool,
    /// Publish at most once per channel and key within
    /// `channel.idempotency_window` (empty: no key).
    pub idempotency_key: Option<String>,
    /// Publish only when newer than the channel stream's last version
    /// (channels without a stream keep no version).
    pub version: Option<Version>,
    /// Subscribers with delta compression may get it as a delta (the
    /// namespace's `delta_publish` asks this for every publication).
    pub delta: bool,
}

/// Where a publication landed in its channel's stream (zero without history).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PublishResult {
    pub offset: u64,
    pub epoch: String,
}

/// The verifiers of connection and subscription tokens.
pub struct Tokens {
    pub connection: Verifier,
    pub subscription: Verifier,
}

impl Tokens {
    /// The verifiers `client.token` and `client.subscription_token` (when
    /// enabled; else the connection one) make.
    pub fn from_config(c: &ClientConfig) -> Result<Self, ConfigError> {
        let connection = Verifier::from_config(&c.token, "client.token")?;
        let subscription = if c.subscription_token.enabled {
            Verifier::from_config(&c.subscription_token.token, "client.subscription_token")?
        } else {
            connection.clone()
        };
        Ok(Self {
            connection,
            subscription,
        })
    }
}

/// How long `/health` waits for one dependency.
const HEALTH_TIMEOUT: Duration = Duration::from_secs(2);

/// One dependency of the node as `/health` reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Check {
    /// `broker`, `presence` or `storage`.
    pub name: &'static str,
    /// What it is (`redis`, `nats`, `sqlite`, `postgres`).
    pub kind: String,
    /// Why it is down; `None` when it answered.
    pub error: Option<String>,
}

/// Waits for one check (`None`: nothing to check), bounded by
/// [`HEALTH_TIMEOUT`]; `Some(error)` when it failed.
async fn checked<E: std::error::Error>(
    check: impl std::future::Future<Output = Option<Result<(), E>>>,
) -> Option<Option<String>> {
    match tokio::time::timeout(HEALTH_TIMEOUT, check).await {
        Ok(None) => None,
        Ok(Some(Ok(()))) => Some(None),
        Ok(Some(Err(e))) => Some(Some(crate::report::Chain(&e).to_string())),
        Err(_) => Some(Some(format!("no answer within {HEALTH_TIMEOUT:?}"))),
    }
}

/// Why a node could not start.
#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Engine(#[from] EngineError),
    #[error("cannot load access rules")]
    Access(#[source] StoreError),
    #[error("cannot set up a proxy: {0}")]
    Proxy(String),
    #[error("cannot start webhooks: {0}")]
    Webhooks(String),
}

/// Reads persisted access rules again every [`access::RELOAD_EVERY`], so a
/// node that missed a change (its broker was away) catches up.
async fn reload_access(access: Arc<Access>, cluster: Arc<Cluster>, stop: CancellationToken) {
    let mut ticker = tokio::time::interval(access::RELOAD_EVERY);
    ticker.tick().await;
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = ticker.tick() => match access.reload().await {
                Ok(added) => cluster.recheck_access(&added),
                Err(e) => tracing::warn!(error = %crate::report::Chain(&e), "access rules not reloaded"),
            },
        }
    }
}

pub struct Node {
    pub config: Config,
    pub rules: Arc<ChannelRules>,
    pub tokens: Tokens,
    /// User blocks and revoked tokens.
    pub access: Arc<Access>,
    pub hub: Arc<Hub>,
    pub counters: Arc<Counters>,
    engine: Engine,
    cluster: Arc<Cluster>,
    shutdown: CancellationToken,
    /// Ends the engine's tasks (broker, shared presence refresh, stream
    /// sweeping) — only once the connections have closed ([`Node::close`]),
    /// so that their last leaves still reach the other nodes.
    engine_stop: CancellationToken,
    /// Tracks connection tasks so shutdown can wait for them.
    tracker: TaskTracker,
    origins: OriginPolicy,
    next_key: AtomicU64,
    /// How fast new connections are let in, by the node and by address.
    pub connect_limits: ConnectLimits,
    /// The application backend's proxies.
    pub proxies: Proxies,
    /// Durable webhooks, when configured.
    pub webhooks: Option<Arc<Webhooks>>,
    /// Histograms and labelled counters for `/metrics`.
    pub metrics: Metrics,
}

impl Node {
    /// Builds the node from its configuration: connects to the cluster's
    /// services if configured, opens durable storage when a namespace uses
    /// it, and starts the node's background tasks (they end at shutdown).
    pub async fn open(config: Config) -> Result<Arc<Self>, NodeError> {
        let tokens = Tokens::from_config(&config.client)?;
        let proxies = Proxies::open(&config).map_err(NodeError::Proxy)?;
        let rules = Arc::new(ChannelRules::new(&config.channel, config.client.insecure));
        let hub = Arc::new(Hub::new());
        let shutdown = CancellationToken::new();
        // The background tasks started below end with this token: if
        // opening fails halfway, those already started end with it.
        let stop_on_failure = shutdown.clone().drop_guard();
        let engine_stop = CancellationToken::new();
        let engine_stop_on_failure = engine_stop.clone().drop_guard();
        let (events, events_rx) = mpsc::channel(BROKER_EVENTS);
        let inbound = Inbound::new(hub.clone(), events);
        let engine = Engine::open(&config, inbound, rules.clone(), &engine_stop).await?;
        let access = Arc::new(match engine.access_rules() {
            Some(store) if config.access().any_persisted() => {
                Access::persisted(config.access(), store)
                    .await
                    .map_err(NodeError::Access)?
            }
            _ => Access::in_memory(),
        });
        stop_on_failure.disarm();
        engine_stop_on_failure.disarm();
        let counters = Arc::new(Counters::default());
        let cluster = Arc::new(Cluster::new(
            &config,
            hub.clone(),
            engine.broker.clone(),
            rules.clone(),
            access.clone(),
            counters.clone(),
        ));
        tokio::spawn(cluster.clone().run(events_rx, shutdown.clone()));
        if access.is_persisted() {
            tokio::spawn(reload_access(
                access.clone(),
                cluster.clone(),
                shutdown.clone(),
            ));
        }
        let targets = webhook::Target::all(&config);
        let webhooks = match engine.event_queue().filter(|_| !targets.is_empty()) {
            Some(queue) => Some(
                Webhooks::open(
                    targets,
                    queue,
                    cluster.name(),
                    cluster.uid(),
                    counters.clone(),
                )
                .await
                .map_err(NodeError::Webhooks)?,
            ),
            None => None,
        };
        let connect_limits = ConnectLimits {
            node: Limiter::new(config.client.connection_rate_limit),
            per_ip: PerKey::new(config.client.connection_rate_limit_per_ip),
        };
        let node = Arc::new(Self {
            origins: OriginPolicy::new(&config.client.allowed_origins),
            connect_limits,
            proxies,
            webhooks,
            metrics: Metrics::default(),
            config,
            rules,
            tokens,
            access,
            hub,
            counters,
            engine,
            cluster,
            shutdown,
            engine_stop,
            tracker: TaskTracker::new(),
            next_key: AtomicU64::new(1),
        });
        let weak = Arc::downgrade(&node);
        node.hub.set_filler(
            Arc::new(move |fill: Fill| fill_from_stream(weak.clone(), fill)),
            node.fill_limit() as u64,
        );
        Ok(node)
    }

    /// Tells the other nodes this one leaves, and flushes and closes
    /// durable storage; call once at shutdown, after the connections.
    pub async fn close(&self) {
        self.cluster.leave().await;
        if let Some(w) = &self.webhooks {
            w.close().await;
        }
        self.engine.close().await;
        self.engine.broker.flush().await;
        self.engine_stop.cancel();
    }

    pub fn shutdown(&self) -> &CancellationToken {
        &self.shutdown
    }

    pub fn tracker(&self) -> &TaskTracker {
        &self.tracker
    }

    pub fn origins(&self) -> &OriginPolicy {
        &self.origins
    }

    pub fn cluster(&self) -> &Cluster {
        &self.cluster
    }

    /// The state of every service the node depends on (its broker when
    /// that is not in memory, a shared presence store, durable storage),
    /// each asked at once and given [`HEALTH_TIMEOUT`].
    pub async fn health(&self) -> Vec<Check> {
        let broker_kind = self.config.broker_kind();
        let broker = checked(async {
            match broker_kind {
                BrokerKind::Memory => None,
                _ => Some(self.engine.broker.check().await),
            }
        });
        let presence = checked(self.engine.presence.check());
        let storage = checked(self.engine.check_storage());
        let (broker, presence, storage) = tokio::join!(broker, presence, storage);
        let lower = |kind: &dyn std::fmt::Debug| format!("{kind:?}").to_lowercase();
        [
            broker.map(|error| ("broker", lower(&broker_kind), error)),
            presence.map(|error| ("presence", "redis".to_string(), error)),
            storage.map(|error| ("storage", lower(&self.config.storage.kind), error)),
        ]
        .into_iter()
        .flatten()
        .map(|(name, kind, error)| Check { name, kind, error })
        .collect()
    }

    pub fn presence(&self) -> &Presence {
        &self.engine.presence
    }

    /// A fresh process-unique key for a connection.
    pub fn next_key(&self) -> u64 {
        self.next_key.fetch_add(1, Ordering::Relaxed)
    }

    /// Durable publications removed by retention so far.
    /// How durable commits have gone, when durable storage is open.
    pub fn commit_metrics(&self) -> Option<&crate::store::CommitMetrics> {
        self.engine.commit_metrics()
    }

    pub fn retention_removed(&self) -> u64 {
        self.engine.retention_removed()
    }

    /// Stream retention for a namespace, or `None` when it keeps no history.
    pub fn stream_options(&self, o: &ChannelOptions) -> Option<StreamOptions> {
        self.rules.stream_options(o)
    }

    /// The retention and store of the channel's stream, `None` when its
    /// namespace keeps no history.
    fn stream_of(
        &self,
        channel: &str,
    ) -> Result<Option<(StreamOptions, &dyn Store)>, ProtocolError> {
        self.stream_with(self.rules.resolve(channel)?.options)
    }

    /// [`Node::stream_of`] for a channel whose options are resolved.
    fn stream_with(
        &self,
        options: &ChannelOptions,
    ) -> Result<Option<(StreamOptions, &dyn Store)>, ProtocolError> {
        let Some(opts) = self.stream_options(options) else {
            return Ok(None);
        };
        // Durable storage is opened at start whenever a namespace uses it.
        let store = self
            .engine
            .store(options.history_storage)
            .ok_or(ProtocolError::INTERNAL)?;
        Ok(Some((opts, store)))
    }

    /// [`Node::stream_of`] for reads: 108 without history.
    fn stream_to_read(&self, channel: &str) -> Result<(StreamOptions, &dyn Store), ProtocolError> {
        self.stream_of(channel)?.ok_or(ProtocolError::NOT_AVAILABLE)
    }

    /// Publishes `data` (raw JSON) into `channel`. With history (unless
    /// `skip_history`), the publication is appended to the channel's stream
    /// (and for durable streams committed) before this returns its
    /// position. With an idempotency key seen in the channel within
    /// `channel.idempotency_window`, nothing is published and the first
    /// publish's result comes back; with a version not above the stream's
    /// last, nothing is published and the stream's position comes back.
    pub async fn publish(
        &self,
        channel: &str,
        data: Bytes,
        options: PublishOptions,
    ) -> Result<PublishResult, ProtocolError> {
        let PublishOptions {
            info,
            tags,
            skip_history,
            idempotency_key,
            version,
            delta,
        } = options;
        let options = self.rules.resolve(channel)?.options;
        let publication = Publication::new(Arc::from(channel), data, info)
            .with_tags(tags)
            .with_use_delta(delta || options.delta_publish);
        self.check_size(&publication, options)?;
        let stream = if skip_history {
            None
        } else {
            self.stream_with(options)?
        };
        let window = self.config.channel.idempotency_window.0;
        let once = idempotency_key
            .filter(|key| !key.is_empty())
            .map(|key| Once { key, window });
        let appended = match (stream, once) {
            (Some((opts, store)), None) if version.is_none() => {
                let stored = store.append(publication, opts).await;
                stored.map(|p| StreamPosition {
                    offset: p.offset,
                    epoch: p.epoch.as_deref().unwrap_or_default().to_owned(),
                })
            }
            (Some((opts, store)), once) => {
                let conditions = Conditions { once, version };
                store.append_if(publication, opts, conditions).await
            }
            (None, once) => {
                let publication = Arc::new(publication);
                let published = match once {
                    None => {
                        let started = std::time::Instant::now();
                        let published = self.engine.broker.publish(publication).await;
                        self.metrics.broker_publish(started.elapsed());
                        published
                    }
                    Some(Once { key, window }) => {
                        let claims = &*self.engine.claims;
                        let publish = || self.engine.broker.publish(publication);
                        idempotency::once(claims, channel, &key, window, publish)
                            .await
                            .map(drop)
                    }
                };
                published.map_err(|e| {
                    tracing::warn!(channel, error = %crate::report::Chain(&e), "publish failed");
                    ProtocolError::BROKER_UNAVAILABLE
                })?;
                Ok(StreamPosition::default())
            }
        };
        let position = appended.map_err(|e| {
            let unavailable = matches!(e, StoreError::Broker(_) | StoreError::Redis(_));
            let code = store_failed(channel, "publish", e);
            if unavailable {
                ProtocolError::BROKER_UNAVAILABLE
            } else {
                code
            }
        })?;
        Counters::incr(&self.counters.publications);
        Ok(PublishResult {
            offset: position.offset,
            epoch: position.epoch,
        })
    }

    /// Refuses a publication larger than its namespace allows, or whose push
    /// (the publisher's info included) a subscriber's queue could not hold:
    /// every subscriber would be closed as too slow, on delivery and again
    /// on each recovery.
    fn check_size(
        &self,
        publication: &Publication,
        options: &ChannelOptions,
    ) -> Result<(), ProtocolError> {
        let queue = self.config.client.queue_max_size;
        if publication.data.len() > self.config.channel.publication_limit(options, queue) {
            return Err(ProtocolError::PUBLICATION_TOO_LARGE);
        }
        let info = publication.info.as_deref().map_or(0, |i| {
            let raw = |b: &Option<Bytes>| b.as_ref().map_or(0, Bytes::len);
            i.user.len() + i.client.len() + raw(&i.conn_info) + raw(&i.chan_info)
        });
        // Strings may grow when escaped: measure exactly only when it is
        // close.
        let rough = publication.data.len() + publication.channel.len() + info;
        if rough * 2 + PUSH_ROOM <= queue
            || json::encode_publication_push(publication).len() <= queue
        {
            return Ok(());
        }
        Err(ProtocolError::PUBLICATION_TOO_LARGE)
    }

    /// Reads a channel's stream: 108 when the namespace keeps no history,
    /// 112 when `since` names a lost epoch.
    pub async fn history(
        &self,
        channel: &str,
        query: HistoryQuery,
    ) -> Result<HistoryPage, ProtocolError> {
        let (opts, store) = self.stream_to_read(channel)?;
        store
            .history(channel, query, opts)
            .await
            .map_err(|e| match e {
                StoreError::Unrecoverable => ProtocolError::UNRECOVERABLE_POSITION,
                e => store_failed(channel, "history", e),
            })
    }

    pub async fn remove_history(&self, channel: &str) -> Result<(), ProtocolError> {
        let (_, store) = self.stream_to_read(channel)?;
        store
            .remove(channel)
            .await
            .map_err(|e| store_failed(channel, "history remove", e))
    }

    /// Announces a join or leave to the channel's subscribers on every node.
    pub async fn presence_event(&self, channel: &str, info: Arc<ClientInfo>, join: bool) {
        let event = Arc::new(PresenceEvent::new(Arc::from(channel), info, join));
        if let Err(e) = self.engine.broker.publish_presence(event).await {
            tracing::warn!(
                channel,
                error = %crate::report::Chain(&e),
                "join/leave event lost"
            );
        }
    }

    /// Who is in a channel, across the cluster.
    pub async fn presence_get(&self, channel: &str) -> Result<Members, ProtocolError> {
        self.presence().get(channel).await.map_err(|e| {
            tracing::warn!(
                channel,
                error = %crate::report::Chain(&e),
                "presence read failed"
            );
            ProtocolError::INTERNAL
        })
    }

    /// Clients and distinct users in a channel, across the cluster.
    pub async fn presence_stats(&self, channel: &str) -> Result<(u32, u32), ProtocolError> {
        self.presence().stats(channel).await.map_err(|e| {
            tracing::warn!(
                channel,
                error = %crate::report::Chain(&e),
                "presence read failed"
            );
            ProtocolError::INTERNAL
        })
    }

    /// Makes the broker's subscription to `channel` match the hub; call
    /// after the channel's first local subscriber joined or its last left.
    pub async fn broker_sync(&self, channel: &str) {
        // A stopping node's subscriptions end with its broker: a round trip
        // per channel its closing connections leave would only hold up
        // their leaves.
        if self.shutdown.is_cancelled() {
            return;
        }
        if let Err(e) = self.engine.broker.sync_channel(channel).await {
            tracing::warn!(
                channel,
                error = %crate::report::Chain(&e),
                "broker subscription not updated"
            );
        }
    }

    /// Acts on users' connections wherever they are in the cluster.
    pub async fn user_command(&self, target: Target, action: Action) -> Result<(), ProtocolError> {
        self.cluster
            .user_command(target, action)
            .await
            .map_err(|e| {
                tracing::warn!(
                    error = %crate::report::Chain(&e),
                    "command not sent to the other nodes"
                );
                ProtocolError::BROKER_UNAVAILABLE
            })
    }

    /// This node and every other live node of the cluster.
    pub fn nodes(&self) -> Vec<NodeInfo> {
        self.cluster.nodes()
    }

    pub fn version() -> &'static str {
        crate::VERSION
    }

    /// The most publications a gap fill reads: as many as a client may
    /// recover (a wider gap sends subscribers to recover, which would fail
    /// as well), and never more than the hub holds back.
    fn fill_limit(&self) -> usize {
        self.config
            .client
            .recovery_limit()
            .unwrap_or(MAX_HELD)
            .min(MAX_HELD)
    }

    /// The publications of a channel's stream after `fill.after` (at most
    /// [`Node::fill_limit`]), to fill a gap in live delivery; `None` when
    /// the stream is no longer in the epoch delivery was in.
    async fn stream_after(&self, fill: &Fill) -> Option<Vec<Arc<Publication>>> {
        let epoch = match &fill.epoch {
            Some(e) => e.to_string(),
            None => {
                let top = self.history(&fill.channel, HistoryQuery::default()).await;
                top.ok()?.position.epoch
            }
        };
        let query = HistoryQuery {
            since: Some(StreamPosition {
                offset: fill.after,
                epoch,
            }),
            limit: Some(self.fill_limit()),
            reverse: false,
        };
        Some(self.history(&fill.channel, query).await.ok()?.publications)
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        // Its background tasks (cluster, presence refresh, stream sweeping,
        // brokers) hold no reference to the node: they end with its tokens.
        self.shutdown.cancel();
        self.engine_stop.cancel();
    }
}

/// Reads what a gap in live delivery misses, in a task of its own, and
/// hands it back to the hub.
fn fill_from_stream(node: Weak<Node>, fill: Fill) {
    tokio::spawn(async move {
        let Some(node) = node.upgrade() else { return };
        let found = node.stream_after(&fill).await;
        node.hub.finish_fill(fill, found);
    });
}

/// The protocol error for a store that failed, logged once here: 107 for a
/// publication the store refuses, else 100.
fn store_failed(channel: &str, what: &str, e: StoreError) -> ProtocolError {
    if let StoreError::Invalid(why) = e {
        tracing::info!(channel, why, "{what} refused");
        return ProtocolError::BAD_REQUEST;
    }
    tracing::warn!(channel, error = %crate::report::Chain(&e), "{what} failed");
    ProtocolError::INTERNAL
}
