//! Pusher's subscription counting (`enable_subscription_count`): when a
//! Pusher socket subscribes to a channel of the app (other than a presence
//! channel, whose members say more) or leaves it, the channel's subscribers
//! on every node hear how many it now has, over the whole cluster
//! (`pusher_internal:subscription_count`), and so do the webhooks that ask
//! for `subscription_count`.
//!
//! Changes are not counted one by one: a channel that changed is marked,
//! and one task per app counts every marked channel in one survey of the
//! cluster, then tells each count to its subscribers everywhere (through
//! the broker). Changes made while it counts are marked again and counted
//! next, so a burst of subscriptions makes a few counts, never one per
//! subscription. A channel found with more than [`LARGE`] subscribers is
//! counted again only after `subscription_count_interval` (Pusher: 5 s).
//! Each node throttles what changes on it.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use tokio::time::Instant;

use crate::node::Node;
use crate::wire::control::Question;

/// Channels with more subscribers than this hear their count at most once
/// per interval.
pub(super) const LARGE: u64 = 100;

/// The marked channels of one app and its counting task.
pub(super) struct Counter {
    state: Arc<Mutex<State>>,
    interval: Duration,
}

#[derive(Default)]
struct State {
    channels: HashMap<String, Due>,
    /// Whether the task runs (it ends when nothing is marked).
    running: bool,
}

/// A channel's counting.
struct Due {
    /// Changed since it was last counted.
    marked: bool,
    /// Not counted again before this (a large channel's last count).
    not_before: Instant,
}

impl Counter {
    pub(super) fn new(interval: Duration) -> Self {
        Counter {
            state: Arc::default(),
            interval,
        }
    }

    /// A socket subscribed to Herald channel `channel`, or left it.
    pub(super) fn changed(&self, node: &Arc<Node>, channel: &str) {
        let mut state = self.state.lock();
        let now = Instant::now();
        let due = state.channels.entry(channel.to_string());
        due.or_insert(Due {
            marked: false,
            not_before: now,
        })
        .marked = true;
        if !state.running {
            state.running = true;
            let (state, node) = (self.state.clone(), node.clone());
            tokio::spawn(count(state, node, self.interval));
        }
    }
}

/// Counts marked channels until none is left.
async fn count(state: Arc<Mutex<State>>, node: Arc<Node>, interval: Duration) {
    loop {
        let (ready, wake) = {
            let mut s = state.lock();
            let now = Instant::now();
            // Forgotten once unmarked and no longer held back.
            s.channels.retain(|_, d| d.marked || d.not_before > now);
            let mut ready = Vec::new();
            let mut wake: Option<Instant> = None;
            for (channel, due) in s.channels.iter_mut().filter(|(_, d)| d.marked) {
                if due.not_before <= now {
                    due.marked = false;
                    ready.push(channel.clone());
                } else {
                    wake = Some(wake.map_or(due.not_before, |w| w.min(due.not_before)));
                }
            }
            if ready.is_empty() && wake.is_none() {
                s.running = false;
                return;
            }
            (ready, wake)
        };
        if ready.is_empty() {
            if let Some(at) = wake {
                tokio::time::sleep_until(at).await;
            }
            continue;
        }
        let question = Question::Subscribers {
            channels: ready.clone(),
        };
        let counts = super::counted(&node, question).await;
        for channel in ready {
            let count = counts.get(&channel).copied().unwrap_or(0);
            if count > LARGE {
                if let Some(due) = state.lock().channels.get_mut(&channel) {
                    due.not_before = Instant::now() + interval;
                }
            }
            // Nobody is left to tell on any node.
            if count > 0 {
                if let Err(e) = node.cluster().tell_count(&channel, count).await {
                    tracing::warn!(channel, error = %crate::report::Chain(&e), "subscription count not sent to the other nodes");
                }
            }
            if let Some(hooks) = &node.webhooks {
                hooks.subscription_count(&channel, count).await;
            }
        }
    }
}
