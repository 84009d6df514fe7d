//! The webhook writer task: what sessions report, recorded in storage in
//! batches, with this node's counts of each user's connections and each
//! channel's subscriptions kept here, in queue order — storage hears of a
//! key only when its count leaves or reaches zero.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use serde_json::json;
use tokio::sync::{mpsc, Notify};
use tokio_util::sync::CancellationToken;

use super::{Item, Maker, BATCH};
use crate::clock::now_ms;
use crate::metrics::Counters;
use crate::store::event_queue::{Change, EventQueue, HolderKind};

/// Holder keys are text without NUL (PostgreSQL refuses it); a user id
/// with one is held under a stand-in.
fn holder_key(key: &str) -> String {
    key.replace('\0', "\u{FFFD}")
}

/// The writer task's state: this node's counts and where to record.
pub(super) struct Writer {
    pub(super) store: Arc<dyn EventQueue>,
    pub(super) maker: Arc<Maker>,
    pub(super) uid: String,
    pub(super) counts: HashMap<(HolderKind, String), u64>,
    pub(super) recorded: Arc<Notify>,
    pub(super) counters: Arc<Counters>,
}

impl Writer {
    /// Records queued items in batches until `stop` (at shutdown, once the
    /// connections are closed) finds the queue empty; a failing database
    /// is tried again, the queue filling meanwhile.
    pub(super) async fn run(mut self, mut items: mpsc::Receiver<Item>, stop: CancellationToken) {
        let mut batch = Vec::with_capacity(BATCH);
        loop {
            tokio::select! {
                biased;
                n = items.recv_many(&mut batch, BATCH) => if n == 0 { return },
                _ = stop.cancelled() => return,
            }
            let changes: Vec<Change> = batch.drain(..).flat_map(|i| self.apply(i)).collect();
            if !changes.is_empty() {
                self.record(&changes).await;
            }
        }
    }

    /// The storage changes an item makes: its events, or a key's first or
    /// last holding on this node.
    fn apply(&mut self, item: Item) -> Vec<Change> {
        match item {
            Item::Events(events) => vec![Change::Events(events)],
            Item::Count {
                kind,
                key,
                up,
                client,
            } => {
                let key = holder_key(&key);
                let edge = count(&mut self.counts, (kind, key.clone()), up);
                if !edge {
                    return Vec::new();
                }
                let extra = match kind {
                    HolderKind::User => json!({"client": client}),
                    HolderKind::Channel | HolderKind::Member => json!({}),
                };
                let events = self.maker.edge(kind, &key, up, extra);
                vec![Change::Hold {
                    kind,
                    key,
                    add: up,
                    events,
                }]
            }
            Item::Reassert => self
                .counts
                .keys()
                .map(|(kind, key)| Change::Hold {
                    kind: *kind,
                    key: key.clone(),
                    add: true,
                    events: self.maker.edge(*kind, key, true, json!({})),
                })
                .collect(),
        }
    }

    async fn record(&self, changes: &[Change]) {
        let mut delay = Duration::from_millis(100);
        loop {
            match self.store.record(&self.uid, changes, now_ms()).await {
                Ok(n) => {
                    Counters::add(&self.counters.webhook_events, n as u64);
                    self.recorded.notify_one();
                    return;
                }
                Err(e) => {
                    tracing::warn!(error = %crate::report::Chain(&e), "webhook events not recorded yet; trying again");
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(Duration::from_secs(5));
                }
            }
        }
    }
}

/// Counts one holding of `key` up or down; true when that made the count
/// leave or reach zero (a down with nothing counted changes nothing).
fn count(
    counts: &mut HashMap<(HolderKind, String), u64>,
    key: (HolderKind, String),
    up: bool,
) -> bool {
    if up {
        let n = counts.entry(key).or_insert(0);
        *n += 1;
        return *n == 1;
    }
    match counts.get_mut(&key) {
        Some(n) if *n > 1 => {
            *n -= 1;
            false
        }
        Some(_) => {
            counts.remove(&key);
            true
        }
        None => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_first_up_and_the_last_down_are_edges() {
        let mut counts = HashMap::new();
        let key = || (HolderKind::User, "ann".to_string());
        // A down before anything is counted (an unpaired one) is nothing.
        assert!(!count(&mut counts, key(), false));
        assert!(count(&mut counts, key(), true));
        assert!(!count(&mut counts, key(), true));
        assert!(!count(&mut counts, key(), false));
        assert!(count(&mut counts, key(), false));
        assert!(counts.is_empty());
        // Whatever the order of two connections' ups and downs, as long as
        // each one's up comes before its down, edges pair up.
        assert!(count(&mut counts, key(), true));
        assert!(count(&mut counts, key(), false));
        assert!(count(&mut counts, key(), true));
        assert!(count(&mut counts, key(), false));
    }

    #[test]
    fn holder_keys_have_no_nul() {
        assert_eq!(holder_key("a\0b"), "a\u{FFFD}b");
    }
}
