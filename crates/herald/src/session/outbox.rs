//! A connection's outbound queue, bounded in bytes. Fan-out pushes without
//! waiting; when a client lets more than the limit pile up, the queue drops
//! what it holds and marks the client slow, and the connection closes with
//! 3008. The writer drains everything queued at once so frames coalesce,
//! by swapping buffers with the queue. Its one task is woken through an
//! `AtomicWaker` when the queue stops being empty (or overflows).

use std::collections::VecDeque;
use std::future::poll_fn;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};

use futures_util::task::AtomicWaker;
use parking_lot::Mutex;

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
    /// Something was queued (or the queue overflowed) since the last drain.
    pending: AtomicBool,
    /// The writer's task.
    writer: AtomicWaker,
    limit: usize,
}

impl Outbox {
    pub fn new(limit: usize) -> Self {
        Self {
            state: Mutex::new(State::default()),
            pending: AtomicBool::new(false),
            writer: AtomicWaker::new(),
            limit,
        }
    }

    /// Marks the queue as having something for the writer and wakes it.
    fn signal(&self) {
        self.pending.store(true, Ordering::Release);
        self.writer.wake();
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
            self.signal();
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
            self.signal();
        }
        true
    }

    pub fn push_control(&self, control: Control) {
        let mut s = self.state.lock();
        let was_empty = s.queue.is_empty();
        s.queue.push_back(Item::Control(Box::new(control)));
        drop(s);
        if was_empty {
            self.signal();
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
        // Under the lock: a push after this drain signals again.
        self.pending.store(s.overflowed, Ordering::Release);
        s.overflowed
    }

    /// Ready when something was queued (or the queue overflowed) since the
    /// last drain. Only the connection's own task waits on its outbox.
    pub fn poll_ready(&self, cx: &mut Context<'_>) -> Poll<()> {
        // Registered before the flag is read, so a push in between is not
        // missed.
        self.writer.register(cx.waker());
        if self.pending.load(Ordering::Acquire) {
            Poll::Ready(())
        } else {
            Poll::Pending
        }
    }

    /// Waits for [`Outbox::poll_ready`].
    pub async fn ready(&self) {
        poll_fn(|cx| self.poll_ready(cx)).await
    }

    /// Waits until the queue overflows (the writer's task, while a write
    /// is blocked).
    pub async fn overflowed(&self) {
        poll_fn(|cx| {
            self.writer.register(cx.waker());
            if self.state.lock().overflowed {
                Poll::Ready(())
            } else {
                Poll::Pending
            }
        })
        .await
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
