//! Cache channels' first event without a race: between joining the hub
//! and reading the channel's last event from history, live events may
//! already reach the socket. While a cache channel waits for that read, the
//! socket notes the newest offset it delivered live on it; the cached
//! event then goes out only if it is newer (else the client already has it,
//! or something newer), under the same lock, so nothing overtakes it.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use herald_protocol::Publication;
use parking_lot::Mutex;

use crate::frame::Frame;
use crate::session::Outbox;

#[derive(Default)]
pub(super) struct Awaiting {
    /// How many channels wait (the delivery path looks no further at 0).
    count: AtomicUsize,
    /// Those channels and the newest offset delivered live on each.
    channels: Mutex<Vec<(Arc<str>, u64)>>,
}

impl Awaiting {
    /// Starts noting live events on `channel`: before the hub subscribe.
    pub(super) fn start(&self, channel: &str) {
        self.channels.lock().push((Arc::from(channel), 0));
        self.count.fetch_add(1, Ordering::AcqRel);
    }

    /// Queues a live event, noting its offset when its channel waits.
    pub(super) fn push_live(&self, p: &Publication, frame: Frame, outbox: &Outbox) {
        if self.count.load(Ordering::Acquire) > 0 {
            let mut channels = self.channels.lock();
            if let Some((_, seen)) = channels.iter_mut().find(|(c, _)| *c == p.channel) {
                *seen = (*seen).max(p.offset);
                outbox.push_frame(frame);
                return;
            }
        }
        outbox.push_frame(frame);
    }

    /// Ends the wait on `channel`: `then` runs under the lock with the
    /// newest offset delivered live meanwhile (0: none).
    pub(super) fn finish(&self, channel: &str, then: impl FnOnce(u64)) {
        let mut channels = self.channels.lock();
        let seen = match channels.iter().position(|(c, _)| &**c == channel) {
            Some(at) => {
                self.count.fetch_sub(1, Ordering::AcqRel);
                channels.swap_remove(at).1
            }
            None => 0,
        };
        then(seen);
    }
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;

    use super::*;
    use crate::session::Item;

    fn publication(channel: &str, offset: u64) -> Publication {
        let mut p = Publication::new(Arc::from(channel), Bytes::new(), None);
        p.offset = offset;
        p
    }

    fn frame(text: &str) -> Frame {
        Frame::Text(text.into())
    }

    fn queued(outbox: &Outbox) -> Vec<String> {
        let mut items = std::collections::VecDeque::new();
        outbox.drain(&mut items);
        items
            .into_iter()
            .filter_map(|i| match i {
                Item::Frame(Frame::Text(t)) => Some(t.to_string()),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn a_live_event_while_waiting_is_noted_and_others_pass() {
        let outbox = Outbox::new(1 << 20);
        let a = Awaiting::default();
        a.push_live(&publication("c", 4), frame("before"), &outbox);
        a.start("c");
        a.push_live(&publication("c", 7), frame("live 7"), &outbox);
        a.push_live(&publication("c", 6), frame("live 6"), &outbox);
        a.push_live(&publication("other", 9), frame("other"), &outbox);
        let mut seen = None;
        a.finish("c", |s| seen = Some(s));
        assert_eq!(seen, Some(7));
        // Done waiting: nothing noted any more.
        a.push_live(&publication("c", 8), frame("after"), &outbox);
        let mut again = None;
        a.finish("c", |s| again = Some(s));
        assert_eq!(again, Some(0));
        assert_eq!(
            queued(&outbox),
            ["before", "live 7", "live 6", "other", "after"]
        );
    }
}
