//! A channel's local subscribers, keyed by connection key: a dense vector
//! (fan-out walks it in order), with a key → position index only once the
//! channel has more than a few. Most channels have one or two subscribers
//! on a node, where a hash table would cost several entries' worth of room.

use std::collections::HashMap;

/// Above this many members, lookups go through the index.
const INDEXED_ABOVE: usize = 16;

#[derive(Debug)]
pub(super) struct Members<V> {
    items: Vec<(u64, V)>,
    /// Boxed on purpose: every channel holds this field, and a pointer is
    /// a sixth of an empty map's inline size.
    #[allow(clippy::box_collection)]
    index: Option<Box<HashMap<u64, usize>>>,
}

impl<V> Default for Members<V> {
    fn default() -> Self {
        Self {
            items: Vec::new(),
            index: None,
        }
    }
}

impl<V> Members<V> {
    fn position(&self, key: u64) -> Option<usize> {
        match &self.index {
            Some(index) => index.get(&key).copied(),
            None => self.items.iter().position(|(k, _)| *k == key),
        }
    }

    pub fn len(&self) -> usize {
        self.items.len()
    }

    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    /// Adds or replaces; returns the value replaced.
    pub fn insert(&mut self, key: u64, value: V) -> Option<V> {
        if let Some(i) = self.position(key) {
            return Some(std::mem::replace(&mut self.items[i].1, value));
        }
        let len = self.items.len();
        if len == self.items.capacity() && len < INDEXED_ABOVE {
            // Small sets grow by half, not by doubling.
            self.items.reserve_exact(len / 2 + 1);
        }
        self.items.push((key, value));
        match &mut self.index {
            Some(index) => {
                index.insert(key, len);
            }
            None if len + 1 > INDEXED_ABOVE => {
                let index = self.items.iter().enumerate().map(|(i, (k, _))| (*k, i));
                self.index = Some(Box::new(index.collect()));
            }
            None => {}
        }
        None
    }

    pub fn remove(&mut self, key: u64) -> Option<V> {
        let i = self.position(key)?;
        let (_, value) = self.items.swap_remove(i);
        if let Some(index) = &mut self.index {
            index.remove(&key);
            if let Some((moved, _)) = self.items.get(i) {
                index.insert(*moved, i);
            }
        }
        if self.items.is_empty() {
            *self = Self::default();
        }
        Some(value)
    }

    pub fn values(&self) -> impl Iterator<Item = &V> {
        self.items.iter().map(|(_, v)| v)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(m: &Members<u64>) {
        for (i, (k, v)) in m.items.iter().enumerate() {
            assert_eq!(k * 10, *v);
            assert_eq!(m.position(*k), Some(i));
        }
        if let Some(index) = &m.index {
            assert_eq!(index.len(), m.items.len());
        }
    }

    #[test]
    fn small_sets_stay_tight() {
        let mut m = Members::default();
        assert_eq!(m.insert(7, 70), None);
        assert_eq!(m.items.capacity(), 1);
        assert_eq!(m.insert(7, 70), Some(70), "a second insert replaces");
        assert_eq!(m.len(), 1);
        assert_eq!(m.insert(8, 80), None);
        assert_eq!(m.remove(7), Some(70));
        assert_eq!(m.remove(7), None);
        assert_eq!(m.remove(8), Some(80));
        assert!(m.is_empty());
        assert_eq!(m.items.capacity(), 0, "an empty set holds no memory");
    }

    #[test]
    fn index_built_past_the_threshold_and_kept_right_on_removal() {
        let mut m = Members::default();
        for k in 1..=100u64 {
            m.insert(k, k * 10);
            check(&m);
        }
        assert!(m.index.is_some());
        // Remove from the front, the back and the middle.
        for k in [1u64, 100, 50, 2, 99, 51] {
            assert_eq!(m.remove(k), Some(k * 10));
            assert_eq!(m.position(k), None);
            check(&m);
        }
        assert_eq!(m.len(), 94);
        let mut seen: Vec<u64> = m.values().copied().collect();
        seen.sort();
        assert_eq!(seen.len(), 94);
        assert!(!seen.contains(&500));
        for k in 1..=100u64 {
            m.remove(k);
        }
        assert!(m.is_empty() && m.index.is_none());
    }
}
