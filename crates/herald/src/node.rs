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
use crate::broker::{Broker, MemoryBroker};
use crate::channel::ChannelRules;
use crate::config::{ChannelOptions, Config, ConfigError, HistoryStorage};
use crate::hub::Hub;
use crate::origin::OriginPolicy;
use crate::presence::Presence;
use crate::store::{
    open_durable, Deliver, DurableStore, HistoryPage, HistoryQuery, MemoryStore, Store, StoreError,
    StreamOptions,
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
    memory_store: Arc<MemoryStore>,
    durable_store: Option<DurableStore>,
    pub presence: Presence,
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
}

impl Node {
    /// Builds the node and opens durable storage when a namespace uses it.
    pub async fn open(config: Config) -> Result<Arc<Self>, NodeError> {
        let mut node = Self::build(config)?;
        let durable = node.config.channel.uses_durable_history();
        if durable {
            let to_broker = node.broker.clone();
            let deliver: Deliver = Arc::new(move |p| to_broker.publish(p));
            let rules = node.rules.clone();
            let opts_for = Arc::new(move |channel: &str| rules.stream_options_for(channel));
            let dir = std::path::PathBuf::from(&node.config.data_dir);
            node.durable_store =
                Some(open_durable(&node.config.storage, &dir, deliver, opts_for).await?);
        }
        Ok(Arc::new(node))
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

    fn build(config: Config) -> Result<Self, ConfigError> {
        let hub = Arc::new(Hub::new());
        let broker: Arc<dyn Broker> = Arc::new(MemoryBroker::new(hub.clone()));
        let to_broker = broker.clone();
        let deliver: Deliver = Arc::new(move |p| to_broker.publish(p));
        let memory_store = Arc::new(MemoryStore::new(deliver));
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
            memory_store,
            durable_store: None,
            presence: Presence::new(),
            connection_tokens,
            subscription_tokens,
            counters: Counters::default(),
            shutdown: CancellationToken::new(),
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
            HistoryStorage::Memory => Ok(&*self.memory_store),
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
                let (stored, epoch) = self
                    .store_for(options)?
                    .append(publication, opts)
                    .await
                    .map_err(|e| {
                        tracing::warn!(channel, error = %e, "publish failed");
                        ProtocolError::INTERNAL
                    })?;
                PublishResult {
                    offset: stored.offset,
                    epoch,
                }
            }
            None => {
                self.broker
                    .publish(Arc::new(publication))
                    .await
                    .map_err(|e| {
                        tracing::warn!(channel, error = %e, "publish failed");
                        ProtocolError::INTERNAL
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
        self.memory_store
            .sweep(|channel| self.rules.stream_options_for(channel));
    }

    /// Tells the broker this node now has subscribers in `channel`.
    pub async fn broker_subscribe(&self, channel: &str) {
        if let Err(e) = self.broker.subscribe(channel).await {
            tracing::warn!(channel, error = %e, "broker subscribe failed");
        }
    }

    pub async fn broker_unsubscribe(&self, channel: &str) {
        if let Err(e) = self.broker.unsubscribe(channel).await {
            tracing::warn!(channel, error = %e, "broker unsubscribe failed");
        }
    }

    pub fn version() -> &'static str {
        env!("CARGO_PKG_VERSION")
    }
}

fn hostname() -> String {
    std::fs::read_to_string("/etc/hostname")
        .map(|s| s.trim().to_string())
        .ok()
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "herald".into())
}
