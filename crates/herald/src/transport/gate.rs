//! Skips polling an event source that has not woken the task since it last
//! had nothing. A connection's task waits on several sources at once (its
//! socket, its outbox, its timers); a `select!` polls all of them whenever
//! any one wakes it, and polling a socket with nothing to read goes through
//! the whole WebSocket read path. Behind a gate, the source is polled with a
//! waker of the gate's own, which notes that the source woke before waking
//! the task; until then the gate answers `Pending` at once.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Wake, Waker};

use futures_util::task::AtomicWaker;

pub struct Gate {
    shared: Arc<Shared>,
    /// The waker handed to the source (wakes `shared`).
    waker: Waker,
}

struct Shared {
    /// The source woke (or returned something) since it was last polled.
    woken: AtomicBool,
    /// The task to wake.
    task: AtomicWaker,
}

impl Wake for Shared {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.woken.store(true, Ordering::Release);
        self.task.wake();
    }
}

impl Gate {
    /// A gate open for the first poll.
    pub fn new() -> Self {
        let shared = Arc::new(Shared {
            woken: AtomicBool::new(true),
            task: AtomicWaker::new(),
        });
        let waker = Waker::from(shared.clone());
        Self { shared, waker }
    }

    /// Called on each poll of the task (`cx` its context): if a source
    /// behind the gate woke since the gate last closed, the context to poll
    /// the sources with; otherwise `None`, and the gate is closed until one
    /// of them wakes. Whoever polls after a `Some` must poll every source
    /// that has not registered this gate's waker yet, or [`Gate::reopen`].
    pub fn enter(&self, cx: &Context<'_>) -> Option<Context<'_>> {
        // Registered before the flag is read, so a wake-up in between is
        // not lost.
        self.shared.task.register(cx.waker());
        self.shared
            .woken
            .swap(false, Ordering::AcqRel)
            .then(|| Context::from_waker(&self.waker))
    }

    /// Opens the gate for the next poll: a source returned something (it
    /// may hold more), or was not polled, or was changed.
    pub fn reopen(&self) {
        self.shared.woken.store(true, Ordering::Release);
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicUsize;

    use super::*;

    /// Counts the times it is woken.
    struct Count(AtomicUsize);

    impl Wake for Count {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::Relaxed);
        }
    }

    #[test]
    fn open_only_after_a_source_woke() {
        let task = Arc::new(Count(AtomicUsize::new(0)));
        let waker = Waker::from(task.clone());
        let cx = Context::from_waker(&waker);
        let gate = Gate::new();
        // Open the first time; the source registers the gate's waker.
        let source = gate.enter(&cx).expect("open at first").waker().clone();
        assert!(gate.enter(&cx).is_none(), "closed until the source wakes");
        source.wake_by_ref();
        assert_eq!(task.0.load(Ordering::Relaxed), 1, "the task is woken");
        assert!(gate.enter(&cx).is_some());
        assert!(gate.enter(&cx).is_none());
        gate.reopen();
        assert!(gate.enter(&cx).is_some());
        assert!(gate.enter(&cx).is_none());
        // Wakes before the task registers again are not lost.
        source.wake();
        assert!(gate.enter(&cx).is_some());
    }
}
