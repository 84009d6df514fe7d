//! Who is in which channel: the clients subscribed to channels whose
//! namespace keeps presence, with the info they show to others. This node's
//! own entries live and die with the node; in a cluster they are also kept
//! in a store every node reads ([`SharedPresence`], in Redis), and the node
//! refreshes its entries there until it stops, so that those of a node that
//! died expire on their own.

mod redis;

pub use self::redis::RedisPresence;

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use futures_util::future::BoxFuture;
use herald_protocol::ClientInfo;
use thiserror::Error;
use tokio_util::sync::CancellationToken;

use crate::redis_link::RedisError;
use crate::sharded::Sharded;

/// Client id → info of everyone present in a channel.
pub type Members = HashMap<String, Arc<ClientInfo>>;

/// Entries refreshed in shared presence at once; the next group waits for
/// the previous one, so a refresh never floods the store's queue.
const REFRESH_GROUP: usize = 1000;

#[derive(Debug, Error)]
pub enum PresenceError {
    #[error("shared presence unavailable")]
    Redis(#[from] RedisError),
}

/// Presence kept where every node of a cluster reads it. Adding a backend
/// is one file implementing this, plus an arm in [`crate::engine`].
pub trait SharedPresence: Send + Sync + 'static {
    fn add<'a>(
        &'a self,
        channel: &'a str,
        info: &'a ClientInfo,
    ) -> BoxFuture<'a, Result<(), PresenceError>>;
    fn remove<'a>(
        &'a self,
        channel: &'a str,
        client: &'a str,
    ) -> BoxFuture<'a, Result<(), PresenceError>>;
    fn get<'a>(&'a self, channel: &'a str) -> BoxFuture<'a, Result<Members, PresenceError>>;
    /// How often a node must refresh its entries for them to stay.
    fn refresh_interval(&self) -> Duration;
    /// Whether the store answers now (for `/health`).
    fn check(&self) -> BoxFuture<'_, Result<(), PresenceError>>;
}

/// This node's presence entries and, in a cluster, the shared presence.
#[derive(Default)]
pub struct Presence {
    local: Sharded<String, Members>,
    shared: Option<Arc<dyn SharedPresence>>,
}

impl Presence {
    pub fn new(shared: Option<Arc<dyn SharedPresence>>) -> Self {
        Self {
            local: Sharded::default(),
            shared,
        }
    }

    /// Adds a client to a channel's presence (here and in shared presence).
    pub async fn add(&self, channel: &str, info: Arc<ClientInfo>) {
        self.local
            .write(channel)
            .entry(channel.to_string())
            .or_default()
            .insert(info.client.clone(), info.clone());
        if let Some(shared) = &self.shared {
            if let Err(e) = shared.add(channel, &info).await {
                tracing::warn!(
                    channel,
                    error = %crate::report::Chain(&e),
                    "shared presence not updated"
                );
            }
        }
    }

    pub async fn remove(&self, channel: &str, client: &str) {
        self.remove_local(channel, client);
        if let Some(shared) = &self.shared {
            if let Err(e) = shared.remove(channel, client).await {
                tracing::warn!(
                    channel,
                    error = %crate::report::Chain(&e),
                    "shared presence not updated"
                );
            }
        }
    }

    /// Who is in a channel, across the cluster.
    /// Whether the shared store answers; `None` without one.
    pub async fn check(&self) -> Option<Result<(), PresenceError>> {
        match &self.shared {
            Some(shared) => Some(shared.check().await),
            None => None,
        }
    }

    pub async fn get(&self, channel: &str) -> Result<Members, PresenceError> {
        match &self.shared {
            None => Ok(self
                .local
                .read(channel)
                .get(channel)
                .cloned()
                .unwrap_or_default()),
            Some(shared) => shared.get(channel).await,
        }
    }

    /// Clients and distinct users in a channel, across the cluster.
    pub async fn stats(&self, channel: &str) -> Result<(u32, u32), PresenceError> {
        if self.shared.is_none() {
            return Ok(self.local.read(channel).get(channel).map_or((0, 0), stats));
        }
        Ok(stats(&self.get(channel).await?))
    }

    fn remove_local(&self, channel: &str, client: &str) {
        let mut shard = self.local.write(channel);
        if let Some(members) = shard.get_mut(channel) {
            members.remove(client);
            if members.is_empty() {
                shard.remove(channel);
            }
        }
    }

    fn contains(&self, channel: &str, client: &str) -> bool {
        self.local
            .read(channel)
            .get(channel)
            .is_some_and(|m| m.contains_key(client))
    }

    /// Every entry of this node.
    fn all(&self) -> Vec<(String, Arc<ClientInfo>)> {
        let mut out = Vec::new();
        for shard in self.local.each_shard() {
            for (channel, members) in shard.iter() {
                out.extend(members.values().map(|i| (channel.clone(), i.clone())));
            }
        }
        out
    }

    /// Keeps this node's entries alive in shared presence until `stop`;
    /// returns at once without shared presence.
    pub async fn refresh_until(self: Arc<Self>, stop: CancellationToken) {
        let Some(shared) = self.shared.clone() else {
            return;
        };
        let mut tick = tokio::time::interval(shared.refresh_interval());
        tick.tick().await;
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tick.tick() => {}
            }
            self.refresh(&*shared).await;
        }
    }

    async fn refresh(&self, shared: &dyn SharedPresence) {
        let entries = self.all();
        for group in entries.chunks(REFRESH_GROUP) {
            let added = futures_util::future::join_all(
                group
                    .iter()
                    .map(|(channel, info)| shared.add(channel, info)),
            )
            .await;
            if let Some(Err(e)) = added.into_iter().find(Result::is_err) {
                tracing::warn!(
                    error = %crate::report::Chain(&e),
                    "presence refresh failed"
                );
            }
        }
        // A client that left while the refresh was under way must not stay.
        for (channel, info) in &entries {
            if !self.contains(channel, &info.client) {
                let _ = shared.remove(channel, &info.client).await;
            }
        }
    }
}

/// Number of clients and of distinct users among `members`.
pub fn stats(members: &Members) -> (u32, u32) {
    let users: HashSet<&str> = members.values().map(|i| i.user.as_str()).collect();
    (members.len() as u32, users.len() as u32)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info(user: &str, client: &str) -> Arc<ClientInfo> {
        Arc::new(ClientInfo {
            user: user.into(),
            client: client.into(),
            ..Default::default()
        })
    }

    #[tokio::test]
    async fn add_remove_stats() {
        let p = Presence::default();
        p.add("c", info("u1", "a")).await;
        p.add("c", info("u1", "b")).await;
        p.add("c", info("u2", "c")).await;
        assert_eq!(p.stats("c").await.unwrap(), (3, 2));
        p.remove("c", "a").await;
        assert_eq!(p.get("c").await.unwrap().len(), 2);
        assert_eq!(p.all().len(), 2);
        p.remove("c", "b").await;
        p.remove("c", "c").await;
        assert_eq!(p.stats("c").await.unwrap(), (0, 0));
        assert!(p.get("c").await.unwrap().is_empty());
        assert!(!p.contains("c", "c"));
    }
}
