//! Pusher's subscription counting (`enable_subscription_count`): when a
//! Pusher socket subscribes to a channel of the app (other than a presence
//! channel, whose members say more) or leaves it, the channel's Pusher
//! subscribers on every node hear how many subscribers it now has over the
//! whole cluster (`pusher_internal:subscription_count`), and so do the
//! webhooks that ask for `subscription_count`.
//!
//! Changes are not counted one by one: a channel that changed is marked,
//! and one task per app counts the marked channels together in one survey
//! of the cluster, then tells each count to its subscribers everywhere
//! (through the broker), stamped with when the survey began so that a
//! socket keeps the newest of two counts that cross. Changes made while it
//! counts are marked again and counted next, so a burst of subscriptions
//! makes a few counts, never one per subscription. A channel found with
//! more than [`LARGE`] subscribers is counted again only after
//! `subscription_count_interval` (Pusher: 5 s); the others at once, even
//! while a large one waits. A survey that fails is tried again after
//! [`RETRY`] (a count of this node's subscribers alone would be told to
//! every node as the channel's). Each node throttles what changes on it.

use std::collections::HashMap;
use std::sync::{Arc, Weak};
use std::time::Duration;

use parking_lot::Mutex;
use tokio::sync::Notify;
use tokio::time::Instant;

use crate::node::Node;
use crate::wire::control::Question;

/// Channels with more subscribers than this hear their count at most once
/// per interval.
pub(super) const LARGE: u64 = 100;

/// Channels asked about in one survey (their names well under a broker's
/// message limit).
const PER_SURVEY: usize = 1000;

/// How long after a failed survey its channels are counted again.
const RETRY: Duration = Duration::from_secs(1);

/// The marked channels of one app and its counting task.
pub(super) struct Counter {
    shared: Arc<Shared>,
}

struct Shared {
    state: Mutex<State>,
    /// Wakes the task waiting for a large channel when another changes.
    wake: Notify,
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
    /// Not counted again before this (a large channel's last count, or a
    /// failed survey).
    not_before: Instant,
}

impl Counter {
    pub(super) fn new(interval: Duration) -> Self {
        Counter {
            shared: Arc::new(Shared {
                state: Mutex::default(),
                wake: Notify::new(),
                interval,
            }),
        }
    }

    /// A socket subscribed to Herald channel `channel`, or left it.
    pub(super) fn changed(&self, node: &Arc<Node>, channel: &str) {
        let mut state = self.shared.state.lock();
        let now = Instant::now();
        let due = state.channels.entry(channel.to_string());
        due.or_insert(Due {
            marked: false,
            not_before: now,
        })
        .marked = true;
        if state.running {
            self.shared.wake.notify_one();
            return;
        }
        state.running = true;
        let running = Running(Some(self.shared.clone()));
        tokio::spawn(count(running, Arc::downgrade(node)));
    }
}

/// The task's hold on `running`: given up when it ends, however it ends
/// (a panic too, else the app would never count again).
struct Running(Option<Arc<Shared>>);

impl Running {
    fn shared(&self) -> &Arc<Shared> {
        self.0.as_ref().expect("held while the task runs")
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if let Some(shared) = self.0.take() {
            shared.state.lock().running = false;
        }
    }
}

/// What is ready to count now, or else when the next channel will be;
/// `None` when nothing is marked: `running` is then given up under the
/// same lock, so that a change made from now on starts a task.
fn next(running: &mut Running) -> Option<(Vec<String>, Option<Instant>)> {
    let shared = running.shared().clone();
    let mut s = shared.state.lock();
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
        running.0 = None;
        return None;
    }
    Some((ready, wake))
}

/// Counts marked channels until none is left or the node shuts down.
async fn count(mut running: Running, node: Weak<Node>) {
    loop {
        let Some((ready, wake)) = next(&mut running) else {
            return;
        };
        let Some(strong) = node.upgrade() else {
            return;
        };
        let stop = strong.shutdown().clone();
        if stop.is_cancelled() {
            return;
        }
        if ready.is_empty() {
            drop(strong);
            let at = wake.unwrap_or_else(Instant::now);
            tokio::select! {
                () = tokio::time::sleep_until(at) => {}
                () = running.shared().wake.notified() => {}
                () = stop.cancelled() => return,
            }
            continue;
        }
        for channels in ready.chunks(PER_SURVEY) {
            tell(&running, &strong, channels).await;
        }
    }
}

/// Counts `channels` over the cluster and tells each count.
async fn tell(running: &Running, node: &Node, channels: &[String]) {
    let at = crate::clock::now_ms();
    let question = Question::Subscribers {
        channels: channels.to_vec(),
    };
    let counts = match node.cluster().count(question).await {
        Ok(counts) => counts,
        Err(e) => {
            tracing::warn!(error = %crate::report::Chain(&e), "subscription counts not made: the other nodes could not be asked; trying again");
            let mut s = running.shared().state.lock();
            for channel in channels {
                if let Some(due) = s.channels.get_mut(channel) {
                    due.marked = true;
                    due.not_before = Instant::now() + RETRY;
                }
            }
            return;
        }
    };
    for channel in channels {
        let count = counts.get(channel).copied().unwrap_or(0);
        if count > LARGE {
            let mut s = running.shared().state.lock();
            if let Some(due) = s.channels.get_mut(channel) {
                due.not_before = Instant::now() + running.shared().interval;
            }
        }
        // Nobody is left to tell on any node.
        if count > 0 {
            if let Err(e) = node.cluster().tell_count(channel, count, at).await {
                tracing::warn!(channel, error = %crate::report::Chain(&e), "subscription count not sent to the other nodes");
            }
        }
        if let Some(hooks) = &node.webhooks {
            hooks.subscription_count(channel, count).await;
        }
    }
}
