//! A connection's subscriptions by channel (a session's, a Pusher
//! socket's): a vector sorted by channel. Most connections hold one or a
//! few, where a hash map's table (several entries' worth of room plus
//! control bytes) would cost more than the entries themselves; the vector
//! grows by half its length, so it stays close to full.

#[derive(Debug)]
pub struct ChannelMap<V> {
    entries: Vec<(Box<str>, V)>,
}

impl<V> Default for ChannelMap<V> {
    fn default() -> Self {
        Self {
            entries: Vec::new(),
        }
    }
}

impl<V> ChannelMap<V> {
    fn find(&self, channel: &str) -> Result<usize, usize> {
        self.entries.binary_search_by(|(c, _)| (**c).cmp(channel))
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    pub fn contains_key(&self, channel: &str) -> bool {
        self.find(channel).is_ok()
    }

    pub fn get(&self, channel: &str) -> Option<&V> {
        self.find(channel).ok().map(|i| &self.entries[i].1)
    }

    pub fn get_mut(&mut self, channel: &str) -> Option<&mut V> {
        self.find(channel).ok().map(|i| &mut self.entries[i].1)
    }

    /// Adds or replaces the channel's state.
    pub fn insert(&mut self, channel: &str, state: V) {
        match self.find(channel) {
            Ok(i) => self.entries[i].1 = state,
            Err(i) => {
                if self.entries.len() == self.entries.capacity() {
                    self.entries.reserve_exact(self.entries.len() / 2 + 1);
                }
                self.entries.insert(i, (channel.into(), state));
            }
        }
    }

    pub fn remove(&mut self, channel: &str) -> Option<V> {
        let i = self.find(channel).ok()?;
        let (_, state) = self.entries.remove(i);
        if self.entries.is_empty() {
            self.entries = Vec::new();
        }
        Some(state)
    }

    pub fn iter(&self) -> impl Iterator<Item = (&str, &V)> {
        self.entries.iter().map(|(c, s)| (&**c, s))
    }

    pub fn channels(&self) -> impl Iterator<Item = &str> {
        self.iter().map(|(c, _)| c)
    }

    pub fn values(&self) -> impl Iterator<Item = &V> {
        self.iter().map(|(_, s)| s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, Default)]
    struct State {
        expires_at: Option<i64>,
        presence: bool,
    }

    fn state(expires_at: i64) -> State {
        State {
            expires_at: Some(expires_at),
            ..State::default()
        }
    }

    #[test]
    fn keeps_channels_sorted_and_found() {
        let mut subs = ChannelMap::default();
        for (i, ch) in ["news", "chat:b", "chat:a", "zed", "alpha"]
            .iter()
            .enumerate()
        {
            subs.insert(ch, state(i as i64));
        }
        assert_eq!(subs.len(), 5);
        let channels: Vec<&str> = subs.channels().collect();
        assert_eq!(channels, ["alpha", "chat:a", "chat:b", "news", "zed"]);
        assert_eq!(subs.get("chat:a").and_then(|s| s.expires_at), Some(2));
        assert!(!subs.contains_key("chat"));
        subs.insert("news", state(9));
        assert_eq!(subs.len(), 5, "a second insert replaces");
        assert_eq!(subs.get("news").and_then(|s| s.expires_at), Some(9));
        subs.get_mut("zed").unwrap().presence = true;
        assert!(subs.get("zed").unwrap().presence);
    }

    #[test]
    fn removing_the_last_frees_the_room() {
        let mut subs = ChannelMap::default();
        subs.insert("a", state(1));
        assert_eq!(subs.entries.capacity(), 1, "one subscription, room for one");
        subs.insert("b", state(2));
        assert_eq!(subs.remove("a").and_then(|s| s.expires_at), Some(1));
        assert!(subs.remove("a").is_none());
        assert!(subs.remove("b").is_some());
        assert_eq!(subs.len(), 0);
        assert_eq!(subs.entries.capacity(), 0);
    }
}
