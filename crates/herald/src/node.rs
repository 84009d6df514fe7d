//! The node: everything one Herald process shares between its connections and
//! its API — configuration, channel rules, token verifiers, the hub, the
//! broker, counters and the shutdown signal.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use herald_protocol::{ClientInfo, ProtocolError, Publication};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::auth::Verifier;
use crate::broker::{Broker, MemoryBroker};
use crate::channel::ChannelRules;
use crate::config::{Config, ConfigError};
use crate::hub::Hub;
use crate::origin::OriginPolicy;

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
    pub rules: ChannelRules,
    pub hub: Arc<Hub>,
    broker: Arc<dyn Broker>,
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

impl Node {
    pub fn new(config: Config) -> Result<Arc<Self>, ConfigError> {
        let hub = Arc::new(Hub::new());
        let broker: Arc<dyn Broker> = Arc::new(MemoryBroker::new(hub.clone()));
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
        Ok(Arc::new(Self {
            rules: ChannelRules::new(&config.channel, config.client.insecure),
            hub,
            broker,
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
        }))
    }

    /// A fresh process-unique key for a connection.
    pub fn next_key(&self) -> u64 {
        self.next_key.fetch_add(1, Ordering::Relaxed)
    }

    /// Publishes `data` (raw JSON) into `channel` and returns once the broker
    /// has taken it.
    pub async fn publish(
        &self,
        channel: &str,
        data: Bytes,
        info: Option<Arc<ClientInfo>>,
        tags: BTreeMap<String, String>,
    ) -> Result<(), ProtocolError> {
        let publication =
            Arc::new(Publication::new(Arc::from(channel), data, info).with_tags(tags));
        self.broker.publish(publication).await.map_err(|e| {
            tracing::warn!(channel, error = %e, "publish failed");
            ProtocolError::INTERNAL
        })?;
        Counters::incr(&self.counters.publications);
        Ok(())
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
