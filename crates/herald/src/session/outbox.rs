//! A connection's outbound queue, bounded in bytes. Fan-out pushes without
//! waiting; when a client lets more than the limit pile up, the queue drops
//! what it holds and marks the client slow, and the connection closes with
//! 3008. The writer drains everything queued at once so frames coalesce,
//! by swapping buffers with the queue.
//!
//! The outbox is also where the connection's task is woken. Queued frames
//! wake it directly; its other sources (the socket, a timer, shutdown) are
//! polled with a waker made from the outbox ([`Outbox`] is `Wake`), which
//! notes that one of them woke. Most wake-ups are deliveries, and polling
//! the others then (an empty socket read goes through the whole WebSocket
//! stack) would cost more than the delivery itself.

use std::collections::VecDeque;
use std::future::poll_fn;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll, Wake};

use futures_util::task::AtomicWaker;
use parking_lot::Mutex;

use crate::frame::Frame;
use crate::hub::Control;

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
    /// The writer holds a frame for the next one (write coalescing): the
    /// second frame wakes it, not the first.
    awaiting_next: bool,
}

pub struct Outbox {
    state: Mutex<State>,
    /// Something was queued (or the queue overflowed) since the last drain.
    pending: AtomicBool,
    /// One of the task's other sources woke it since it last polled them.
    others: AtomicBool,
    /// The connection's task.
    writer: AtomicWaker,
    limit: usize,
}

/// What a poll of the connection's task should look at.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Wakes {
    /// Frames (or an overflow) wait in the queue.
    pub queued: bool,
    /// Another source woke the task: poll them all, with the outbox's waker.
    pub others: bool,
}

impl Wake for Outbox {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.others.store(true, Ordering::Release);
        self.writer.wake();
    }
}

impl Outbox {
    pub fn new(limit: usize) -> Self {
        Self {
            state: Mutex::new(State::default()),
            pending: AtomicBool::new(false),
            // The other sources are polled the first time.
            others: AtomicBool::new(true),
            writer: AtomicWaker::new(),
            limit,
        }
    }

    /// Called on each poll of the connection's task (`cx` its context):
    /// registers the task to be woken, and tells what woke it since the
    /// last call. After `others`, the caller polls every other source with
    /// a waker made from this outbox, or calls [`Outbox::reopen_others`].
    pub fn wakes(&self, cx: &Context<'_>) -> Wakes {
        // Registered before the flags are read, so a wake-up in between is
        // not lost.
        self.writer.register(cx.waker());
        Wakes {
            queued: self.pending.load(Ordering::Acquire),
            others: self.others.swap(false, Ordering::AcqRel),
        }
    }

    /// Has the other sources polled at the next poll: one returned
    /// something (it may hold more), or they were not all polled, or one
    /// was changed.
    pub fn reopen_others(&self) {
        self.others.store(true, Ordering::Release);
    }

    /// Marks the queue as having something for the writer and wakes it.
    fn signal(&self) {
        self.pending.store(true, Ordering::Release);
        self.writer.wake();
    }

    /// Counts `size` more queued bytes; false when the client is over the
    /// limit: the first time, the queue is dropped and the writer told (it
    /// closes the connection as too slow).
    fn admit(&self, s: &mut State, size: usize) -> bool {
        if s.overflowed {
            return false;
        }
        if s.bytes + size > self.limit {
            s.overflowed = true;
            s.queue.clear();
            s.bytes = 0;
            self.signal();
            return false;
        }
        s.bytes += size;
        true
    }

    /// Queues a frame; returns false when the client is (now) too slow.
    pub fn push_frame(&self, frame: Frame) -> bool {
        let mut s = self.state.lock();
        if !self.admit(&mut s, frame.len()) {
            return false;
        }
        if s.queue.capacity() == 0 {
            // Room for one: the buffer stays with an idle connection, and
            // grows only for connections that get bursts.
            s.queue.reserve_exact(1);
        }
        s.queue.push_back(Item::Frame(frame));
        let wake = s.queue.len() == if s.awaiting_next { 2 } else { 1 };
        drop(s);
        if wake {
            self.signal();
        }
        true
    }

    /// Holds the one frame queued for the next (write coalescing): true
    /// when the second frame will wake the writer, false when more than one
    /// item is queued already, or a request from outside (the writer
    /// writes them).
    pub fn await_next(&self) -> bool {
        let mut s = self.state.lock();
        s.awaiting_next =
            s.queue.len() == 1 && !s.overflowed && matches!(s.queue.front(), Some(Item::Frame(_)));
        s.awaiting_next
    }

    /// Whether a request from outside is queued (the writer acts on it
    /// without holding anything).
    pub fn has_request(&self) -> bool {
        let s = self.state.lock();
        s.queue.iter().any(|item| matches!(item, Item::Control(_)))
    }

    /// Whether the frames held by [`Outbox::await_next`] are to be written:
    /// the next came, or something else did.
    pub fn next_came(&self) -> bool {
        let s = self.state.lock();
        !s.awaiting_next || s.queue.len() >= 2 || s.overflowed
    }

    /// Queues a request from outside the connection. Commands posted for an
    /// emulated connection count towards the byte limit like frames (a
    /// client posting faster than its stream is read overflows the queue
    /// and is closed as too slow).
    pub fn push_control(&self, control: Control) {
        let size = match &control {
            Control::Emulate(data) => data.len(),
            _ => 0,
        };
        let mut s = self.state.lock();
        if size > 0 && !self.admit(&mut s, size) {
            return;
        }
        s.queue.push_back(Item::Control(Box::new(control)));
        // A request is never held with frames (nor for the next one): the
        // writer is woken whatever is queued.
        s.awaiting_next = false;
        drop(s);
        self.signal();
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
        s.awaiting_next = false;
        // Under the lock: a push after this drain signals again.
        self.pending.store(s.overflowed, Ordering::Release);
        s.overflowed
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

    /// Counts the times it is woken.
    struct Count(std::sync::atomic::AtomicUsize);

    impl Wake for Count {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::Relaxed);
        }
    }

    #[test]
    fn wakes_the_task_for_frames_and_for_other_sources() {
        let task = Arc::new(Count(Default::default()));
        let waker = std::task::Waker::from(task.clone());
        let cx = Context::from_waker(&waker);
        let woken = || task.0.load(Ordering::Relaxed);
        let o = Arc::new(Outbox::new(100));
        let (none, queued, others) = (
            Wakes {
                queued: false,
                others: false,
            },
            Wakes {
                queued: true,
                others: false,
            },
            Wakes {
                queued: false,
                others: true,
            },
        );
        // The other sources are polled the first time, then not until one
        // of them wakes the task through the outbox's waker.
        assert_eq!(o.wakes(&cx), others);
        assert_eq!(o.wakes(&cx), none);
        // A frame wakes the task once and stays reported until drained.
        o.push_frame(Frame::from_static("x"));
        o.push_frame(Frame::from_static("y"));
        assert_eq!(woken(), 1);
        assert_eq!(o.wakes(&cx), queued);
        o.drain(&mut VecDeque::new());
        assert_eq!(o.wakes(&cx), none);
        // Another source wakes the task through the outbox's waker.
        let source = std::task::Waker::from(o.clone());
        source.wake_by_ref();
        assert_eq!(woken(), 2);
        assert_eq!(o.wakes(&cx), others);
        assert_eq!(o.wakes(&cx), none);
        o.reopen_others();
        assert_eq!(o.wakes(&cx), others);
        // Wake-ups before the task registers again are not lost.
        source.wake();
        o.push_frame(Frame::from_static("z"));
        assert_eq!(
            o.wakes(&cx),
            Wakes {
                queued: true,
                others: true
            }
        );
    }

    #[test]
    fn a_frame_held_for_the_next_wakes_the_task_when_it_comes() {
        let task = Arc::new(Count(Default::default()));
        let waker = std::task::Waker::from(task.clone());
        let cx = Context::from_waker(&waker);
        let woken = || task.0.load(Ordering::Relaxed);
        let o = Outbox::new(100);
        o.wakes(&cx);
        o.push_frame(Frame::from_static("a"));
        assert_eq!(woken(), 1);
        assert!(o.await_next(), "one frame queued: it waits for the next");
        assert!(!o.next_came());
        o.wakes(&cx);
        o.push_frame(Frame::from_static("b"));
        assert_eq!(woken(), 2, "the second frame wakes the task");
        assert!(o.next_came());
        o.wakes(&cx);
        o.push_frame(Frame::from_static("c"));
        assert_eq!(woken(), 2, "a third does not");
        let mut out = VecDeque::new();
        o.drain(&mut out);
        assert_eq!(out.len(), 3);
        // The drain ends the wait: the next frame wakes the task at once.
        o.wakes(&cx);
        o.push_frame(Frame::from_static("d"));
        assert_eq!(woken(), 3);
        o.push_frame(Frame::from_static("e"));
        assert!(!o.await_next(), "two frames queued: no reason to wait");
        o.drain(&mut out);
        // A request from outside is not held.
        o.wakes(&cx);
        o.push_frame(Frame::from_static("f"));
        assert!(o.await_next());
        o.wakes(&cx);
        o.push_control(Control::Message(Bytes::new()));
        assert_eq!(woken(), 5);
        assert!(o.next_came());
        o.drain(&mut out);
        o.push_control(Control::Message(Bytes::new()));
        assert!(!o.await_next(), "a lone request is not held either");
        assert!(o.has_request());
        o.drain(&mut out);
        // Nor is an overflow.
        let o = Outbox::new(2);
        o.wakes(&cx);
        o.push_frame(Frame::from_static("g"));
        assert!(o.await_next());
        o.wakes(&cx);
        assert!(!o.push_frame(Frame::from_static("hh")));
        assert_eq!(woken(), 7);
        assert!(o.next_came());
    }
}
