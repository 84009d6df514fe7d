//! A map split into shards, each behind its own lock, so that users of
//! different keys rarely wait for each other. The hub's channel, client and
//! user maps, this node's presence and the memory streams are each one.

use std::collections::hash_map::RandomState;
use std::collections::HashMap;
use std::hash::{BuildHasher, Hash};

use parking_lot::{RwLock, RwLockReadGuard, RwLockWriteGuard};

/// Shards per map; a power of two.
const SHARDS: usize = 64;

pub struct Sharded<K, V> {
    hasher: RandomState,
    shards: Box<[RwLock<HashMap<K, V>>]>,
}

impl<K, V> Default for Sharded<K, V> {
    fn default() -> Self {
        Self {
            hasher: RandomState::new(),
            shards: (0..SHARDS).map(|_| RwLock::new(HashMap::new())).collect(),
        }
    }
}

impl<K: Hash + Eq, V> Sharded<K, V> {
    /// The shard of `key`. A borrowed form of the key (`&str` for an
    /// `Arc<str>` or `String` key) hashes alike, so it finds the same shard.
    fn shard<Q: Hash + ?Sized>(&self, key: &Q) -> &RwLock<HashMap<K, V>> {
        &self.shards[(self.hasher.hash_one(key) as usize) & (SHARDS - 1)]
    }

    /// The shard holding `key`, locked for reading.
    pub fn read<Q: Hash + ?Sized>(&self, key: &Q) -> RwLockReadGuard<'_, HashMap<K, V>> {
        self.shard(key).read()
    }

    /// The shard holding `key`, locked for writing.
    pub fn write<Q: Hash + ?Sized>(&self, key: &Q) -> RwLockWriteGuard<'_, HashMap<K, V>> {
        self.shard(key).write()
    }

    /// Each shard in turn, locked for reading while it is looked at.
    pub fn each_shard(&self) -> impl Iterator<Item = RwLockReadGuard<'_, HashMap<K, V>>> {
        self.shards.iter().map(|s| s.read())
    }

    /// Keeps the entries `keep` accepts, one shard at a time.
    pub fn retain(&self, mut keep: impl FnMut(&K, &mut V) -> bool) {
        for shard in self.shards.iter() {
            shard.write().retain(&mut keep);
        }
    }

    /// Entries in every shard (each counted under its own lock, so only
    /// exact while nothing changes).
    pub fn len(&self) -> usize {
        self.each_shard().map(|s| s.len()).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;

    #[test]
    fn borrowed_keys_find_their_entries() {
        let map: Sharded<Arc<str>, u32> = Sharded::default();
        for i in 0..200 {
            let key: Arc<str> = Arc::from(format!("k{i}"));
            map.write(&*key).insert(key.clone(), i);
        }
        assert_eq!(map.len(), 200);
        for i in 0..200 {
            let key = format!("k{i}");
            assert_eq!(map.read(key.as_str()).get(key.as_str()), Some(&i));
        }
        map.retain(|_, v| *v % 2 == 0);
        assert_eq!(map.len(), 100);
        assert_eq!(map.each_shard().count(), SHARDS);
    }
}
