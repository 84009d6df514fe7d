//! What wakes a socket's task, polled so that a delivery costs little:
//! most wake-ups are frames queued in the outbox, and those poll only the
//! outbox. The other sources (shutdown, the socket, a timer) are polled
//! with the outbox's second waker, and only after one of them woke the
//! task (see `session::outbox`). The timer and the shutdown future are made
//! once per socket and the timer is reset only when its deadline changes:
//! each new one would register (and deregister) again.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use futures_util::StreamExt;
use tokio::time::{Instant, Sleep};
use tokio_tungstenite::tungstenite::{self, Message};
use tokio_util::sync::WaitForCancellationFuture;

use crate::session::Outbox;
use crate::transport::upgrade::Socket;

/// What woke a socket's task.
pub enum Wake {
    Shutdown,
    Outbox,
    Inbound(Option<Result<Message, tungstenite::Error>>),
    Deadline,
}

/// A socket task's sources of wake-ups.
pub struct Wakes<'a, 'n> {
    outbox: Arc<Outbox>,
    others: Waker,
    sleep: Pin<&'a mut Sleep>,
    shutdown: Pin<&'a mut WaitForCancellationFuture<'n>>,
}

impl<'a, 'n> Wakes<'a, 'n> {
    /// `sleep` and `shutdown` are pinned by the caller, once.
    pub fn new(
        outbox: Arc<Outbox>,
        sleep: Pin<&'a mut Sleep>,
        shutdown: Pin<&'a mut WaitForCancellationFuture<'n>>,
    ) -> Self {
        let others = Waker::from(outbox.clone());
        Self {
            outbox,
            others,
            sleep,
            shutdown,
        }
    }

    /// The next wake-up, in order: shutdown, the outbox, an inbound
    /// message, the timer at `deadline`.
    pub async fn next(&mut self, socket: &mut Socket, deadline: Instant) -> Wake {
        let outbox = &self.outbox;
        if self.sleep.deadline() != deadline {
            self.sleep.as_mut().reset(deadline);
            outbox.reopen_others();
        }
        let (sleep, shutdown) = (&mut self.sleep, &mut self.shutdown);
        let others = &self.others;
        std::future::poll_fn(|cx| {
            let wakes = outbox.wakes(cx);
            let gcx = &mut Context::from_waker(others);
            if wakes.others && shutdown.as_mut().poll(gcx).is_ready() {
                outbox.reopen_others();
                return Poll::Ready(Wake::Shutdown);
            }
            if wakes.queued {
                if wakes.others {
                    outbox.reopen_others(); // the socket and timer were not polled
                }
                return Poll::Ready(Wake::Outbox);
            }
            if !wakes.others {
                return Poll::Pending;
            }
            if let Poll::Ready(msg) = socket.poll_next_unpin(gcx) {
                outbox.reopen_others(); // more may be buffered
                return Poll::Ready(Wake::Inbound(msg));
            }
            if sleep.as_mut().poll(gcx).is_ready() {
                outbox.reopen_others();
                return Poll::Ready(Wake::Deadline);
            }
            Poll::Pending
        })
        .await
    }
}

/// How a write to a socket ended.
pub enum Written {
    Done,
    /// The socket failed, or the write took longer than its limit.
    Failed,
    /// The write waited on a client that does not read until the outbox
    /// overflowed: the client is too slow.
    Overflowed,
}

/// Awaits a write that may wait for the client to read: at most `limit`,
/// and only until `outbox` overflows. Most writes complete at once (the
/// socket has room): those need no timer and no overflow watch; the rest
/// is boxed, so that it takes no room in the socket's task while idle.
pub async fn bounded_write<F>(write: F, outbox: &Outbox, limit: Duration) -> Written
where
    F: Future<Output = Result<(), tungstenite::Error>>,
{
    let mut write = std::pin::pin!(write);
    let ended = |r: Result<(), tungstenite::Error>| match r {
        Ok(()) => Written::Done,
        Err(_) => Written::Failed,
    };
    if let Poll::Ready(r) = futures_util::poll!(write.as_mut()) {
        return ended(r);
    }
    Box::pin(async {
        tokio::select! {
            r = tokio::time::timeout(limit, write) => r.map_or(Written::Failed, ended),
            _ = outbox.overflowed() => Written::Overflowed,
        }
    })
    .await
}

/// An instant for "no deadline" (a year away).
pub fn far_future() -> Instant {
    Instant::now() + std::time::Duration::from_secs(86_400 * 365)
}
