//! A node's second and later readings of its watching sockets' online
//! channels: every [`REREAD`], each channel once for all the app's
//! watchers on the node (a socket's first reading is its own, when it
//! signs in).

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Weak};
use std::time::Duration;

use futures_util::StreamExt;
use parking_lot::Mutex;

use super::{Watch, REREAD};
use crate::node::Node;
use crate::session::Outbox;

/// The longest a reading of an online channel may take (of all of them,
/// at a socket's first reading); a channel not read by then keeps what
/// its watchers knew of it.
pub const READ_LIMIT: Duration = Duration::from_secs(2);

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
    /// A task reads them (started by the first, ended when none is left).
    running: bool,
}

impl Rereads {
    /// A socket that watches, from now on (after its own first reading).
    pub fn add(&self, watcher: Weak<dyn Watcher>, node: &Arc<Node>) {
        let mut s = self.state.lock();
        s.list.push(watcher);
        if !s.running {
            s.running = true;
            let running = Running(self.state.clone());
            tokio::spawn(reread(running, Arc::downgrade(node)));
        }
    }
}

/// The reading task's hold on `running`: given up if it panics, so that
/// the next watcher starts another.
struct Running(Arc<Mutex<Watchers>>);

impl Drop for Running {
    fn drop(&mut self) {
        if std::thread::panicking() {
            self.0.lock().running = false;
        }
    }
}

/// Every [`REREAD`], reads the watched channels again for every socket
/// still watching; ends when none is left or the node is gone.
async fn reread(running: Running, node: Weak<Node>) {
    loop {
        tokio::time::sleep(REREAD).await;
        let watchers: Vec<Arc<dyn Watcher>> = {
            let mut s = running.0.lock();
            s.list.retain(|w| w.strong_count() > 0);
            let live: Vec<_> = s.list.iter().filter_map(Weak::upgrade).collect();
            if live.is_empty() {
                s.running = false;
                return;
            }
            live
        };
        let Some(node) = node.upgrade() else {
            running.0.lock().running = false;
            return;
        };
        read_again(|channel| read_channel(&node, channel), &watchers).await;
    }
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

/// One reading for `watchers`: each begins, every channel any of them
/// watches is read once (by `read`, [`READS_AT_ONCE`] at a time), then each
/// ends with its own channels; a channel that could not be read is left
/// out, so its watchers keep what they knew of it.
async fn read_again<F, R>(read: F, watchers: &[Arc<dyn Watcher>])
where
    F: Fn(String) -> R,
    R: std::future::Future<Output = (String, Option<Vec<String>>)>,
{
    let watches: Vec<(&Watch, &Outbox)> = watchers
        .iter()
        .filter_map(|w| Some((w.watch()?, w.outbox())))
        .collect();
    let mut channels = HashSet::new();
    for (watch, _) in &watches {
        watch.begin_reading();
        channels.extend(watch.channels());
    }
    let read: HashMap<String, Vec<String>> = futures_util::stream::iter(channels)
        .map(read)
        .buffer_unordered(READS_AT_ONCE)
        .filter_map(|(channel, sockets)| async move { Some((channel, sockets?)) })
        .collect()
        .await;
    for (watch, outbox) in watches {
        let mine = watch
            .channels()
            .into_iter()
            .filter_map(|c| {
                let sockets = read.get(&c)?.clone();
                Some((c, sockets))
            })
            .collect();
        watch.end_reading(mine, outbox);
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::super::online_channel;
    use super::super::tests::{read, told};
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
            let users: Vec<String> = users.iter().map(|u| u.to_string()).collect();
            Arc::new(TestWatcher {
                watch: Watch::new("1", &users),
                outbox: Outbox::new(1 << 20),
            })
        };
        let (ann, al) = (watcher(&["b", "c"]), watcher(&["b"]));
        for w in [&ann, &al] {
            let watch = w.watch().unwrap();
            watch.begin_reading();
            watch.end_reading(vec![read("b", &["s1"]), read("c", &[])], w.outbox());
            told(w.outbox());
        }
        // Since then b's socket went without a word, c's came; c cannot
        // be read this time.
        let reads = Mutex::new(Vec::new());
        let read_one = |channel: String| {
            reads.lock().push(channel.clone());
            let sockets = (channel == online_channel("1", "b")).then(Vec::new);
            async move { (channel, sockets) }
        };
        read_again(read_one, &[ann.clone(), al.clone()]).await;
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
}
