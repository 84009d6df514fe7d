//! A connection's outbound queue, bounded in bytes. Fan-out pushes without
//! waiting; when a client lets more than the limit pile up, the queue drops
//! what it holds and marks the client slow, and the connection closes with
//! 3008. The writer drains everything queued at once so frames coalesce,
//! by swapping buffers with the queue.

use std::collections::VecDeque;

use parking_lot::Mutex;
use tokio::sync::Notify;

use crate::hub::{Control, Frame};

/// A queued item. Controls are rare and large, so they are boxed to keep
/// every item (and the queue's buffer) the size of a frame.
#[derive(Debug)]
pub enum Item {
    Frame(Frame),
    Control(Box<Control>),
}

#[derive(Default)]
struct State {
    queue: VecDeque<Item>,
    bytes: usize,
    overflowed: bool,
}

pub struct Outbox {
    state: Mutex<State>,
    notify: Notify,
    limit: usize,
}

impl Outbox {
    pub fn new(limit: usize) -> Self {
        Self {
            state: Mutex::new(State::default()),
            notify: Notify::new(),
            limit,
        }
    }

    /// Queues a frame; returns false when the client is (now) too slow.
    pub fn push_frame(&self, frame: Frame) -> bool {
        let mut s = self.state.lock();
        if s.overflowed {
            return false;
        }
        if s.bytes + frame.len() > self.limit {
            s.overflowed = true;
            s.queue.clear();
            s.bytes = 0;
            drop(s);
            self.notify.notify_one();
            return false;
        }
        let was_empty = s.queue.is_empty();
        s.bytes += frame.len();
        if s.queue.capacity() == 0 {
            // Room for one: the buffer stays with an idle connection, and
            // grows only for connections that get bursts.
            s.queue.reserve_exact(1);
        }
        s.queue.push_back(Item::Frame(frame));
        drop(s);
        if was_empty {
            self.notify.notify_one();
        }
        true
    }

    pub fn push_control(&self, control: Control) {
        let mut s = self.state.lock();
        let was_empty = s.queue.is_empty();
        s.queue.push_back(Item::Control(Box::new(control)));
        drop(s);
        if was_empty {
            self.notify.notify_one();
        }
    }

    /// Takes everything queued into `out` by swapping `out`'s buffer (emptied
    /// first) with the queue's: nothing is copied, and a writer that gives
    /// back the buffer it emptied keeps a single buffer going between the
    /// two. Returns true if the client overflowed the queue.
    pub fn drain(&self, out: &mut VecDeque<Item>) -> bool {
        out.clear();
        let mut s = self.state.lock();
        std::mem::swap(&mut s.queue, out);
        s.bytes = 0;
        s.overflowed
    }

    /// Waits until something is queued (or the queue overflowed).
    pub async fn ready(&self) {
        self.notify.notified().await
    }

    /// Waits until the queue overflows. May take the wake-up meant for
    /// [`Outbox::ready`], so call it only while the writer is about to drain
    /// anyway.
    pub async fn overflowed(&self) {
        loop {
            let notified = self.notify.notified();
            if self.state.lock().overflowed {
                return;
            }
            notified.await;
        }
    }

    pub fn queued_bytes(&self) -> usize {
        self.state.lock().bytes
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    #[test]
    fn overflow_at_the_byte_limit() {
        let o = Outbox::new(10);
        assert!(o.push_frame(Frame::from_static("12345")));
        assert!(o.push_frame(Frame::from_static("12345")));
        assert_eq!(o.queued_bytes(), 10);
        assert!(!o.push_frame(Frame::from_static("1")));
        assert!(!o.push_frame(Frame::from_static("")));
        let mut out = VecDeque::new();
        assert!(o.drain(&mut out));
        assert!(out.is_empty(), "an overflowed queue drops what it held");
    }

    #[test]
    fn drain_frees_room() {
        let o = Outbox::new(4);
        assert!(o.push_frame(Frame::from_static("1234")));
        let mut out = VecDeque::new();
        assert!(!o.drain(&mut out));
        assert_eq!(out.len(), 1);
        assert!(o.push_frame(Frame::from_static("1234")));
        o.push_control(Control::Message(Bytes::new()));
        // Whatever `out` still holds is dropped, not queued again.
        o.drain(&mut out);
        assert_eq!(out.len(), 2);
        assert!(matches!(&out[1], Item::Control(c) if matches!(**c, Control::Message(_))));
        out.reserve(100);
        let writers = out.capacity();
        assert!(!o.drain(&mut out));
        assert!(out.is_empty());
        assert_eq!(
            o.state.lock().queue.capacity(),
            writers,
            "the writer's emptied buffer goes to the queue, not a copy"
        );
        assert_eq!(o.queued_bytes(), 0);
    }

    #[test]
    fn a_first_frame_gets_room_for_one() {
        let o = Outbox::new(100);
        assert!(o.push_frame(Frame::from_static("x")));
        assert_eq!(o.state.lock().queue.capacity(), 1);
    }

    #[tokio::test]
    async fn wakes_the_writer() {
        let o = std::sync::Arc::new(Outbox::new(100));
        let o2 = o.clone();
        let t = tokio::spawn(async move { o2.ready().await });
        o.push_frame(Frame::from_static("x"));
        t.await.unwrap();
    }
}
