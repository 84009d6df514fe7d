//! Who is in which channel: the clients subscribed to channels whose
//! namespace keeps presence, with the info they show to others. This node's
//! own entries live and die with the node; in a cluster they are also kept
//! in Redis ([`RedisPresence`]), from where every node reads.

mod redis;

pub use redis::RedisPresence;

use std::collections::{HashMap, HashSet};
use std::hash::BuildHasher;
use std::sync::Arc;

use herald_protocol::ClientInfo;
use parking_lot::RwLock;

const SHARDS: usize = 64;

pub type Members = HashMap<String, Arc<ClientInfo>>;

#[derive(Default)]
pub struct Presence {
    hasher: std::collections::hash_map::RandomState,
    shards: Vec<RwLock<HashMap<String, Members>>>,
}

impl Presence {
    pub fn new() -> Self {
        Self {
            hasher: Default::default(),
            shards: (0..SHARDS).map(|_| RwLock::new(HashMap::new())).collect(),
        }
    }

    fn shard(&self, channel: &str) -> &RwLock<HashMap<String, Members>> {
        &self.shards[(self.hasher.hash_one(channel) as usize) & (SHARDS - 1)]
    }

    pub fn add(&self, channel: &str, info: Arc<ClientInfo>) {
        self.shard(channel)
            .write()
            .entry(channel.to_string())
            .or_default()
            .insert(info.client.clone(), info);
    }

    pub fn remove(&self, channel: &str, client: &str) {
        let mut shard = self.shard(channel).write();
        if let Some(members) = shard.get_mut(channel) {
            members.remove(client);
            if members.is_empty() {
                shard.remove(channel);
            }
        }
    }

    pub fn contains(&self, channel: &str, client: &str) -> bool {
        self.shard(channel)
            .read()
            .get(channel)
            .is_some_and(|m| m.contains_key(client))
    }

    /// Client id → info of everyone present.
    pub fn get(&self, channel: &str) -> Members {
        self.shard(channel)
            .read()
            .get(channel)
            .cloned()
            .unwrap_or_default()
    }

    /// Every entry of this node (to refresh them in shared presence).
    pub fn all(&self) -> Vec<(String, Arc<ClientInfo>)> {
        let mut out = Vec::new();
        for shard in &self.shards {
            for (channel, members) in shard.read().iter() {
                out.extend(members.values().map(|i| (channel.clone(), i.clone())));
            }
        }
        out
    }

    /// Number of clients and of distinct users present.
    pub fn stats(&self, channel: &str) -> (u32, u32) {
        let shard = self.shard(channel).read();
        shard.get(channel).map_or((0, 0), stats)
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

    #[test]
    fn add_remove_stats() {
        let p = Presence::new();
        p.add("c", info("u1", "a"));
        p.add("c", info("u1", "b"));
        p.add("c", info("u2", "c"));
        assert_eq!(p.stats("c"), (3, 2));
        p.remove("c", "a");
        assert_eq!(p.get("c").len(), 2);
        p.remove("c", "b");
        p.remove("c", "c");
        assert_eq!(p.stats("c"), (0, 0));
        assert!(p.get("c").is_empty());
    }
}
