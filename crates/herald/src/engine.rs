//! The engine: the broker, the streams of memory-history namespaces, the
//! presence store and the durable store a node uses, chosen from typed
//! configuration in this one place. With a Redis broker the memory-history
//! streams live in Redis too, and appending to one publishes it (one script
//! assigns the offset and publishes, so every node sees one order): there,
//! streams and broker are one engine, and are chosen together.
//!
//! Adding a backend (see ARCHITECTURE.md for the steps): a broker is a file
//! in `broker/` and one arm in [`open_broker`]; a shared presence store a
//! file in `presence/` and one arm in [`open_presence`]; a SQL database a
//! file in `store/sql/` and one arm in `store::open_durable`.

use std::sync::Arc;

use thiserror::Error;
use tokio_util::sync::CancellationToken;

use crate::broker::{Broker, BrokerError, Inbound, MemoryBroker, NatsBroker, RedisBroker};
use crate::channel::ChannelRules;
use crate::config::{BrokerKind, Config, HistoryStorage};
use crate::idempotency::{Claims, LocalClaims, NatsClaims, RedisClaims};
use crate::presence::{Presence, RedisPresence, SharedPresence};
use crate::redis_link::{RedisError, RedisShards};
use crate::store::{
    event_queue::EventQueue, open_durable, AccessRules, Deliver, DurableStore, MemoryStore,
    RedisStore, Store, StoreError,
};

/// Why an engine could not be opened.
#[derive(Debug, Error)]
pub enum EngineError {
    #[error("cannot join the cluster")]
    Broker(#[from] BrokerError),
    #[error("cannot reach Redis")]
    Redis(#[from] RedisError),
    #[error("cannot open durable storage")]
    Storage(#[from] StoreError),
}

pub struct Engine {
    pub broker: Arc<dyn Broker>,
    /// Streams of memory-history namespaces.
    streams: Arc<dyn Store>,
    /// Streams of durable namespaces, when there are any.
    durable: Option<Arc<DurableStore>>,
    pub presence: Arc<Presence>,
    /// Idempotency keys of publications without a stream (those with one
    /// are kept by its store).
    pub claims: Arc<dyn Claims>,
}

/// What [`open_broker`] opens.
struct Opened {
    broker: Arc<dyn Broker>,
    /// Streams of memory-history namespaces.
    streams: Arc<dyn Store>,
    claims: Arc<dyn Claims>,
    /// The Redis servers of a Redis broker (presence may share them).
    shards: Option<RedisShards>,
}

impl Engine {
    /// Opens what `config` asks for, connecting to the cluster's services,
    /// and starts the engine's background tasks (stream sweeping, presence
    /// refresh), which end with `stop`. `inbound` is where the broker hands
    /// what it receives; `rules` give each channel's retention.
    pub async fn open(
        config: &Config,
        inbound: Inbound,
        rules: Arc<ChannelRules>,
        stop: &CancellationToken,
    ) -> Result<Self, EngineError> {
        let Opened {
            broker,
            streams,
            claims,
            shards,
        } = open_broker(config, inbound, &rules, stop).await?;
        let presence = Arc::new(Presence::new(open_presence(config, shards).await?));
        tokio::spawn(presence.clone().refresh_until(stop.clone()));
        let durable = if config.channel.uses_durable_history()
            || config.access().any_persisted()
            || config.has_webhooks()
        {
            let rules = rules.clone();
            let opts_for = Arc::new(move |channel: &str| rules.stream_options_for(channel));
            let dir = std::path::Path::new(&config.data_dir);
            let deliver = deliver_to(&broker);
            let window = config.channel.idempotency_window.0;
            Some(Arc::new(
                open_durable(&config.storage, dir, deliver, opts_for, window).await?,
            ))
        } else {
            None
        };
        Ok(Self {
            broker,
            streams,
            durable,
            presence,
            claims,
        })
    }

    /// The store of a namespace's streams; `None` for durable history when
    /// no namespace uses it (so storage was not opened).
    pub fn store(&self, storage: HistoryStorage) -> Option<&dyn Store> {
        match storage {
            HistoryStorage::Memory => Some(&*self.streams),
            HistoryStorage::Durable => self.durable.as_deref().map(|d| d as &dyn Store),
        }
    }

    /// Flushes and closes durable storage; call once at shutdown.
    pub async fn close(&self) {
        if let Some(d) = &self.durable {
            d.close().await;
        }
    }

    /// Durable publications removed by retention so far.
    pub fn retention_removed(&self) -> u64 {
        self.durable
            .as_deref()
            .map_or(0, DurableStore::removed_total)
    }

    /// Whether durable storage answers; `None` when it is not open.
    pub async fn check_storage(&self) -> Option<Result<(), StoreError>> {
        match &self.durable {
            Some(d) => Some(d.check().await),
            None => None,
        }
    }

    /// Durable storage as the keeper of access rules, when it is open.
    /// How durable commits have gone, when durable storage is open.
    pub fn commit_metrics(&self) -> Option<&crate::store::CommitMetrics> {
        self.durable.as_ref().map(|d| d.commit_metrics())
    }

    /// The webhook event queue, in durable storage.
    pub fn event_queue(&self) -> Option<Arc<dyn EventQueue>> {
        self.durable.as_ref().map(|d| d.events())
    }

    pub fn access_rules(&self) -> Option<Arc<dyn AccessRules>> {
        self.durable.clone().map(|d| d as Arc<dyn AccessRules>)
    }
}

/// The broker, the memory-history streams and idempotency claims that go
/// with it, and the Redis servers when the broker is Redis.
async fn open_broker(
    config: &Config,
    inbound: Inbound,
    rules: &Arc<ChannelRules>,
    stop: &CancellationToken,
) -> Result<Opened, EngineError> {
    Ok(match config.broker_kind() {
        BrokerKind::Memory => {
            let broker: Arc<dyn Broker> = Arc::new(MemoryBroker::new(inbound));
            Opened {
                streams: memory_streams(&broker, rules, stop),
                broker,
                claims: Arc::new(LocalClaims::default()),
                shards: None,
            }
        }
        BrokerKind::Redis => {
            let shards = RedisShards::connect(config.broker_redis()).await?;
            let broker = RedisBroker::start(shards.clone(), inbound, stop.child_token()).await?;
            Opened {
                broker: Arc::new(broker),
                streams: Arc::new(RedisStore::new(shards.clone())),
                claims: Arc::new(RedisClaims::new(shards.clone())),
                shards: Some(shards),
            }
        }
        BrokerKind::Nats => {
            let cfg = &config.broker.nats;
            let broker = NatsBroker::connect(cfg, inbound, stop.child_token()).await?;
            let claims = NatsClaims::new(broker.client(), &cfg.prefix);
            let broker: Arc<dyn Broker> = Arc::new(broker);
            Opened {
                // Never used in a cluster: configuration refuses memory
                // history with NATS, which carries no streams.
                streams: memory_streams(&broker, rules, stop),
                broker,
                claims: Arc::new(claims),
                shards: None,
            }
        }
    })
}

/// Streams in this process, delivering through `broker`, swept of idle
/// ones until `stop`.
fn memory_streams(
    broker: &Arc<dyn Broker>,
    rules: &Arc<ChannelRules>,
    stop: &CancellationToken,
) -> Arc<dyn Store> {
    let store = Arc::new(MemoryStore::new(deliver_to(broker)));
    let rules = rules.clone();
    let opts_for = move |channel: &str| rules.stream_options_for(channel);
    tokio::spawn(store.clone().sweep_until(opts_for, stop.clone()));
    store
}

/// Where a store hands what it appended: the broker.
fn deliver_to(broker: &Arc<dyn Broker>) -> Deliver {
    let broker = broker.clone();
    Arc::new(move |p| broker.publish(p))
}

/// The presence store every node reads, in a cluster; `None` on one node.
async fn open_presence(
    config: &Config,
    broker_shards: Option<RedisShards>,
) -> Result<Option<Arc<dyn SharedPresence>>, EngineError> {
    let Some(cfg) = config.presence_redis() else {
        return Ok(None);
    };
    let shards = match broker_shards {
        Some(shards) if std::ptr::eq(cfg, config.broker_redis()) => shards,
        _ => RedisShards::connect(cfg).await?,
    };
    Ok(Some(Arc::new(RedisPresence::new(
        shards,
        cfg.presence_ttl.0,
    ))))
}
