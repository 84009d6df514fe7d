//! Readings of watching sockets' online channels: a socket's first, when
//! it signs in ([`read_first`]), then the node's every [`REREAD`], each
//! channel once for all the app's watchers on the node ([`Rereads`]) —
//! one reading ([`read_again`]) for both.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Weak};
use std::time::Duration;

use futures_util::StreamExt;
use parking_lot::Mutex;
use tokio::time::MissedTickBehavior;
use tokio_util::sync::CancellationToken;

use super::{Watch, REREAD};
use crate::node::Node;
use crate::session::Outbox;

/// The longest a reading of an online channel may take (of all of them,
/// at a socket's first reading); a channel not read by then keeps what
/// its watchers knew of it.
const READ_LIMIT: Duration = Duration::from_secs(2);

/// How many online channels a node reads at once when it reads again.
const READS_AT_ONCE: usize = 32;

/// A watching socket, as the node's readings see it.
pub trait Watcher: Send + Sync {
    fn watch(&self) -> Option<&Watch>;
    fn outbox(&self) -> &Outbox;
}

/// An app's watching sockets on this node, read again together every
/// [`REREAD`]: each online channel watched is read once, whoever on the
/// node watches it, so that presence is read per channel and node rather
/// than per channel and socket.
#[derive(Default)]
pub struct Rereads {
    state: Arc<Mutex<Watchers>>,
}

#[derive(Default)]
struct Watchers {
    list: Vec<Weak<dyn Watcher>>,
    /// The task reading them, by the number it was started as (started by
    /// the first watcher, ended when none is left).
    running: Option<u64>,
    started: u64,
}

impl Rereads {
    /// A socket that watches, from now on (after its own first reading).
    pub fn add(&self, watcher: Weak<dyn Watcher>, node: &Arc<Node>) {
        let mut s = self.state.lock();
        s.list.push(watcher);
        if s.running.is_none() {
            s.started += 1;
            s.running = Some(s.started);
            let running = Running(self.state.clone(), s.started);
            let stop = node.shutdown().clone();
            tokio::spawn(reread(running, Arc::downgrade(node), stop));
        }
    }
}

/// A reading task's hold on `running`: given up however the task ends (a
/// panic, the runtime dropping it), so that the next watcher starts
/// another — unless a newer task holds it already.
struct Running(Arc<Mutex<Watchers>>, u64);

impl Drop for Running {
    fn drop(&mut self) {
        let mut s = self.0.lock();
        if s.running == Some(self.1) {
            s.running = None;
        }
    }
}

/// The longest one reading again of every watched channel may take, in
/// all; channels not read by then keep their state until the next.
const TICK_LIMIT: Duration = Duration::from_secs(10);

/// Every [`REREAD`], reads the watched channels again for every socket
/// still watching; ends when none is left, the node is gone or it stops.
async fn reread(running: Running, node: Weak<Node>, stop: CancellationToken) {
    let mut tick = tokio::time::interval(REREAD);
    tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
    tick.tick().await; // The first tick is at once.
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            _ = tick.tick() => {}
        }
        let watchers: Vec<Weak<dyn Watcher>> = {
            let mut s = running.0.lock();
            s.list.retain(|w| w.strong_count() > 0);
            if s.list.is_empty() {
                s.running = None;
                return;
            }
            s.list.clone()
        };
        let Some(node) = node.upgrade() else {
            return;
        };
        let read = |channel| read_channel(&node, channel);
        read_again(read, &watchers, TICK_LIMIT).await;
    }
}

/// A socket's first reading, when it signs in (before it joins the node's
/// readings): the same reading for it alone, at most [`READ_LIMIT`] in all.
pub async fn read_first(node: &Node, watcher: &Arc<dyn Watcher>) {
    let read = |channel| read_channel(node, channel);
    read_again(read, &[Arc::downgrade(watcher)], READ_LIMIT).await;
}

/// The sockets in online channel `channel`, or `None` when it cannot be
/// read within [`READ_LIMIT`].
async fn read_channel(node: &Node, channel: String) -> (String, Option<Vec<String>>) {
    let read = tokio::time::timeout(READ_LIMIT, node.presence_get(&channel)).await;
    let sockets = match read {
        Ok(Ok(members)) => Some(members.into_keys().collect()),
        _ => None,
    };
    (channel, sockets)
}

/// Watchers handled between yields to the runtime, so that a node with
/// very many does not hold its thread for long.
const WATCHERS_AT_ONCE: usize = 1000;

/// One reading for `watchers` (those still there): each begins, every
/// channel any of them watches is read once (by `read`,
/// [`READS_AT_ONCE`] at a time, for at most `limit` in all), then each
/// ends with its own channels; a channel that could not be read is left
/// out, so its watchers keep what they knew of it. Sockets that end
/// meanwhile are not held.
async fn read_again<F, R>(read: F, watchers: &[Weak<dyn Watcher>], limit: Duration)
where
    F: Fn(String) -> R,
    R: std::future::Future<Output = (String, Option<Vec<String>>)>,
{
    let mut channels = HashSet::new();
    for chunk in watchers.chunks(WATCHERS_AT_ONCE) {
        for watcher in chunk.iter().filter_map(Weak::upgrade) {
            if let Some(watch) = watcher.watch() {
                watch.begin_reading();
                channels.extend(watch.channels());
            }
        }
        tokio::task::yield_now().await;
    }
    let deadline = tokio::time::Instant::now() + limit;
    let mut reads = futures_util::stream::iter(channels)
        .map(read)
        .buffer_unordered(READS_AT_ONCE);
    let mut read = HashMap::new();
    while let Ok(Some((channel, sockets))) = tokio::time::timeout_at(deadline, reads.next()).await {
        if let Some(sockets) = sockets {
            read.insert(channel, sockets);
        }
    }
    drop(reads);
    for chunk in watchers.chunks(WATCHERS_AT_ONCE) {
        for watcher in chunk.iter().filter_map(Weak::upgrade) {
            let Some(watch) = watcher.watch() else {
                continue;
            };
            let mine = watch
                .channels()
                .into_iter()
                .filter_map(|c| {
                    let sockets: Vec<String> = read.get(&c)?.clone();
                    Some((c, sockets))
                })
                .collect();
            watch.end_reading(mine, watcher.outbox());
        }
        tokio::task::yield_now().await;
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::super::online_channel;
    use super::super::tests::{read, told, watching};
    use super::*;

    struct TestWatcher {
        watch: Watch,
        outbox: Outbox,
    }

    impl Watcher for TestWatcher {
        fn watch(&self) -> Option<&Watch> {
            Some(&self.watch)
        }

        fn outbox(&self) -> &Outbox {
            &self.outbox
        }
    }

    #[tokio::test]
    async fn a_reading_again_reads_each_channel_once_for_all_its_watchers() {
        let watcher = |users: &[&str]| -> Arc<dyn Watcher> {
            let (watch, outbox) = watching(users);
            Arc::new(TestWatcher { watch, outbox })
        };
        let (ann, al) = (watcher(&["b", "c"]), watcher(&["b"]));
        for w in [&ann, &al] {
            let watch = w.watch().unwrap();
            watch.begin_reading();
            watch.end_reading(vec![read("b", &["s1"]), read("c", &["s2"])], w.outbox());
            told(w.outbox());
        }
        // Since then b's socket went without a word; c cannot be read this
        // time (its user stays online for ann, who was told nothing of c).
        let reads = Mutex::new(Vec::new());
        let read_one = |channel: String| {
            reads.lock().push(channel.clone());
            let sockets = (channel == online_channel("1", "b")).then(Vec::new);
            async move { (channel, sockets) }
        };
        let watchers = [Arc::downgrade(&ann), Arc::downgrade(&al)];
        read_again(read_one, &watchers, Duration::from_secs(5)).await;
        let mut reads = reads.into_inner();
        reads.sort();
        assert_eq!(reads, [online_channel("1", "b"), online_channel("1", "c")]);
        let offline_b = json!([{"name": "offline", "user_ids": ["b"]}]);
        assert_eq!(
            told(ann.outbox()),
            std::slice::from_ref(&offline_b),
            "c kept as it was"
        );
        assert_eq!(told(al.outbox()), [offline_b]);
    }

    #[tokio::test(start_paused = true)]
    async fn channels_not_read_within_the_limit_keep_their_state() {
        let (watch, outbox) = watching(&["b", "c"]);
        let ann: Arc<dyn Watcher> = Arc::new(TestWatcher { watch, outbox });
        let watch = ann.watch().unwrap();
        watch.begin_reading();
        watch.end_reading(vec![read("b", &["s1"]), read("c", &["s2"])], ann.outbox());
        told(ann.outbox());
        // b's reading comes at once (empty), c's never within the limit.
        let read_one = |channel: String| async move {
            if channel == online_channel("1", "c") {
                tokio::time::sleep(Duration::from_secs(60)).await;
            }
            (channel, Some(Vec::new()))
        };
        read_again(read_one, &[Arc::downgrade(&ann)], Duration::from_secs(1)).await;
        assert_eq!(
            told(ann.outbox()),
            [json!([{"name": "offline", "user_ids": ["b"]}])]
        );
    }
}
