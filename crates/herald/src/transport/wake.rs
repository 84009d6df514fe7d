//! What wakes a socket's task, polled so that a delivery costs little:
//! most wake-ups are frames queued in the outbox, and those poll only the
//! outbox. The other sources (shutdown, the socket, a timer) are polled
//! with the outbox's second waker, and only after one of them woke the
//! task (see `session::outbox`). The timer and the shutdown future are made
//! once per socket and the timer is reset only when its deadline changes:
//! each new one would register (and deregister) again.
//!
//! Frames are written as they come while a connection is quiet; one that
//! gets them faster than a write each is worth holds them briefly so that
//! they share a write ([`Coalesce`]).

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use futures_util::StreamExt;
use tokio::time::{Instant, Sleep};
use tokio_tungstenite::tungstenite::{self, Message};
use tokio_util::sync::WaitForCancellationFuture;

use crate::config::ClientConfig;
use crate::session::Outbox;
use crate::transport::upgrade::Socket;

/// What woke a socket's task.
pub enum Wake {
    Shutdown,
    Outbox,
    Inbound(Option<Result<Message, tungstenite::Error>>),
    Deadline,
}

/// When a connection writes what is queued for it.
///
/// With `client.write_delay` set (Centrifugo's), every write waits that
/// long after its first frame. Otherwise writes are adaptive
/// (`client.adaptive_write_delay`, Herald's, the cap here): a frame that
/// comes to a connection that has not written for at least the cap goes
/// out at once, so light traffic sees no added latency. So does one that
/// comes sooner to a connection whose frames have lately come further
/// apart than the cap (a moving average of the spacing, [`SPACING_WEIGHT`]):
/// a few frames that happen to meet are no steady rate, and holding one
/// for a next that does not come would only add latency (the tail of a
/// chat room's). On a connection that does receive at a steady rate, a
/// frame waits for the next, which comes about as long after it as it
/// came after the last write: the two share a write. It waits at most a
/// quarter longer than that, and never more than the cap. A write is most
/// of a delivery's cost (a system call and the TCP path), so a connection
/// that receives faster than a frame per cap writes about half as often,
/// each frame waiting at most a quarter more than the interval between
/// frames. The spacing is measured from the last write (replies included),
/// and a new connection counts as quiet.
#[derive(Debug, Clone, Copy)]
pub struct Coalesce {
    fixed: Duration,
    cap: Duration,
    /// When the last write began.
    last: Option<Instant>,
    /// The recent spacing of frames, in microseconds: a moving average of
    /// the time from the last write to each frame that came while nothing
    /// was held, back to [`SPACING_CEILING`] caps after a pause that long.
    spacing_us: u32,
}

/// The weight of each new spacing in the average: a quarter, so a steady
/// rate is recognised after a few frames and one late frame does not end
/// it.
const SPACING_WEIGHT: u64 = 4;

/// A pause of this many caps makes a connection quiet again (its spacing
/// this many caps), however busy it was before.
const SPACING_CEILING: u32 = 2;

impl Coalesce {
    pub fn new(config: &ClientConfig) -> Self {
        Self {
            fixed: config.write_delay.0,
            cap: config.adaptive_write_delay.0,
            last: None,
            spacing_us: quiet_spacing(config.adaptive_write_delay.0),
        }
    }

    /// A write begins at `now`, ending any hold.
    fn write(&mut self, now: Instant, held: &mut Option<Instant>) -> Wake {
        *held = None;
        self.wrote(now);
        Wake::Outbox
    }

    /// A write begins at `now`.
    pub(crate) fn wrote(&mut self, now: Instant) {
        self.last = Some(now);
    }

    /// For frames first queued at `now` in `outbox`: until when they wait
    /// (`None`: written now). A wait for the next frame has the outbox
    /// wake the task when it comes.
    /// Never holds a request from outside. A quiet connection's write asks
    /// the outbox nothing.
    pub(crate) fn hold_for(&mut self, now: Instant, outbox: &Outbox) -> Option<Instant> {
        let (until, next) = self.hold(now)?;
        // Waiting for the next frame: the outbox refuses when a request
        // is queued.
        let holds = if next {
            outbox.await_next()
        } else {
            !outbox.has_request()
        };
        holds.then_some(until)
    }

    /// Whether held frames are to be written now: the next frame came
    /// (adaptive; a request ends that wait too), or a request from outside
    /// is queued (fixed delay).
    pub(crate) fn hold_over(&self, outbox: &Outbox) -> bool {
        if self.ends_with_next() {
            outbox.next_came()
        } else {
            outbox.has_request()
        }
    }

    /// Whether a hold ends as soon as the next frame comes (adaptive), not
    /// only at its time (Centrifugo's fixed delay).
    pub(crate) fn ends_with_next(&self) -> bool {
        self.fixed.is_zero()
    }

    /// For frames that came at `now`: until when they wait, and whether
    /// for the next frame (else for the time).
    fn hold(&mut self, now: Instant) -> Option<(Instant, bool)> {
        if !self.fixed.is_zero() {
            return Some((now + self.fixed, false));
        }
        let since = now.saturating_duration_since(self.last?);
        let quiet = u64::from(quiet_spacing(self.cap));
        let sample = micros(since);
        // A pause as long as a quiet connection's spacing makes it one again.
        let average = if sample >= quiet {
            quiet
        } else {
            (u64::from(self.spacing_us) * (SPACING_WEIGHT - 1) + sample) / SPACING_WEIGHT
        };
        self.spacing_us = u32::try_from(average).unwrap_or(u32::MAX);
        let steady = since < self.cap && average < micros(self.cap);
        steady.then(|| (now + (since + since / 4).min(self.cap), true))
    }
}

/// The spacing of a quiet connection's frames (the ceiling) for `cap`.
fn quiet_spacing(cap: Duration) -> u32 {
    u32::try_from(micros(cap) * u64::from(SPACING_CEILING)).unwrap_or(u32::MAX)
}

fn micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX)
}

/// A socket task's sources of wake-ups.
pub struct Wakes<'a, 'n> {
    outbox: Arc<Outbox>,
    others: Waker,
    sleep: Pin<&'a mut Sleep>,
    shutdown: Pin<&'a mut WaitForCancellationFuture<'n>>,
    coalesce: Coalesce,
    /// Queued frames wait until then, or for the next (see [`Coalesce`]).
    held: Option<Instant>,
    /// The next queued frames go out at once (replies to the client).
    urgent: bool,
}

impl<'a, 'n> Wakes<'a, 'n> {
    /// `sleep` and `shutdown` are pinned by the caller, once.
    pub fn new(
        outbox: Arc<Outbox>,
        sleep: Pin<&'a mut Sleep>,
        shutdown: Pin<&'a mut WaitForCancellationFuture<'n>>,
        coalesce: Coalesce,
    ) -> Self {
        let others = Waker::from(outbox.clone());
        Self {
            outbox,
            others,
            sleep,
            shutdown,
            coalesce,
            held: None,
            urgent: false,
        }
    }

    /// Has what is queued next written at once, not held: the caller
    /// handled a client's message, and its reply should not wait.
    pub fn urgent(&mut self) {
        self.urgent = true;
    }

    /// The next wake-up, in order: shutdown, the outbox (frames to write,
    /// once any hold is over), an inbound message, the timer at `deadline`.
    /// The task writes on `Wake::Outbox`. Not an `async fn`: the future
    /// holds only `self`, the socket and the deadline, so that it adds
    /// little to every connection's task while it waits.
    pub fn next<'s>(
        &'s mut self,
        socket: &'s mut Socket,
        deadline: Instant,
    ) -> impl Future<Output = Wake> + use<'s, 'a, 'n> {
        let timer = move |held: Option<Instant>| held.map_or(deadline, |h| h.min(deadline));
        if self.sleep.deadline() != timer(self.held) {
            self.sleep.as_mut().reset(timer(self.held));
            self.outbox.reopen_others();
        }
        // Only what is queued when this is first polled is urgent.
        let mut urgent = std::mem::take(&mut self.urgent);
        std::future::poll_fn(move |cx| {
            let Wakes {
                outbox,
                others,
                sleep,
                shutdown,
                coalesce,
                held,
                ..
            } = &mut *self;
            let wakes = outbox.wakes(cx);
            let gcx = &mut Context::from_waker(others);
            if wakes.others && shutdown.as_mut().poll(gcx).is_ready() {
                outbox.reopen_others();
                return Poll::Ready(Wake::Shutdown);
            }
            let mut others_due = wakes.others;
            if wakes.queued {
                let now = Instant::now();
                let hold = match *held {
                    _ if urgent => None,
                    None => coalesce.hold_for(now, outbox),
                    // Held for the next frame: has it come (or a request)?
                    Some(_) if coalesce.hold_over(outbox) => None,
                    Some(until) => Some(until),
                };
                match hold {
                    None => {
                        if wakes.others {
                            outbox.reopen_others(); // the socket and timer were not polled
                        }
                        return Poll::Ready(coalesce.write(now, held));
                    }
                    Some(until) if *held != Some(until) => {
                        // The timer is armed for the hold's end; it wakes
                        // through `others`.
                        *held = Some(until);
                        sleep.as_mut().reset(timer(*held));
                        // (Ready only if the session's deadline has passed.)
                        others_due |= sleep.as_mut().poll(gcx).is_ready();
                    }
                    Some(_) => {}
                }
            }
            urgent = false;
            if !others_due {
                return Poll::Pending;
            }
            if let Poll::Ready(msg) = socket.poll_next_unpin(gcx) {
                outbox.reopen_others(); // more may be buffered
                return Poll::Ready(Wake::Inbound(msg));
            }
            if sleep.as_mut().poll(gcx).is_ready() {
                outbox.reopen_others();
                let now = Instant::now();
                if held.is_some_and(|h| h <= now) {
                    // The hold is over: write what came.
                    return Poll::Ready(coalesce.write(now, held));
                }
                return Poll::Ready(Wake::Deadline);
            }
            Poll::Pending
        })
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

#[cfg(test)]
mod tests {
    use super::*;

    /// A coalescer that last wrote at `last`, to a connection whose frames
    /// have lately come 2 ms apart (a steady rate).
    fn coalesce(fixed: u64, cap: u64, last: Option<Instant>) -> Coalesce {
        Coalesce {
            fixed: Duration::from_millis(fixed),
            cap: Duration::from_millis(cap),
            last,
            spacing_us: 2_000,
        }
    }

    /// Frames `gaps` ms apart, each written when it comes unless held (a
    /// held one is written with the next, or alone when its hold ends
    /// first): which were held.
    fn held(c: &mut Coalesce, gaps: &[u64]) -> Vec<bool> {
        let mut now = c.last.unwrap();
        let mut held: Option<(Instant, bool)> = None;
        gaps.iter()
            .map(|gap| {
                now += Duration::from_millis(*gap);
                match held.take() {
                    // The next came: the held frame goes with it.
                    Some((until, _)) if now <= until => {
                        c.wrote(now);
                        return false;
                    }
                    // The hold ran out before: that frame went alone.
                    Some((until, _)) => c.wrote(until),
                    None => {}
                }
                held = c.hold(now);
                if held.is_none() {
                    c.wrote(now);
                }
                held.is_some()
            })
            .collect()
    }

    #[test]
    fn a_quiet_connection_writes_at_once() {
        let now = Instant::now();
        let ms = Duration::from_millis;
        assert_eq!(coalesce(0, 8, None).hold(now), None, "never written");
        let wrote = Some(now - ms(8));
        assert_eq!(coalesce(0, 8, wrote).hold(now), None, "quiet for the cap");
        assert_eq!(coalesce(0, 0, Some(now)).hold(now), None, "no cap: off");
    }

    #[test]
    fn a_busy_connection_waits_for_the_next_frame_within_the_cap() {
        let now = Instant::now();
        let ms = Duration::from_millis;
        // A frame 4 ms after the last write waits for the next at most 5 ms.
        let hold = coalesce(0, 8, Some(now - ms(4))).hold(now);
        assert_eq!(hold, Some((now + ms(5), true)));
        // Never longer than the cap.
        let hold = coalesce(0, 8, Some(now - ms(7))).hold(now);
        assert_eq!(hold, Some((now + ms(8), true)));
    }

    #[test]
    fn frames_that_happen_to_meet_are_not_held() {
        // A connection quiet for long, then frames 5 ms apart (cap 8 ms).
        let mut c = coalesce(0, 8, Some(Instant::now()));
        c.spacing_us = quiet_spacing(c.cap);
        let held = held(&mut c, &[1000, 5, 5, 5, 5, 5, 5, 5, 5, 5]);
        // Two or three that meet are written at once; once they keep
        // coming, every other frame waits for the next.
        assert_eq!(&held[..4], &[false; 4], "{held:?}");
        assert!(held[4..].contains(&true), "a steady rate holds: {held:?}");
    }

    #[test]
    fn a_hold_ends_at_its_time_and_a_long_pause_is_felt() {
        let mut c = coalesce(0, 8, Some(Instant::now()));
        // Steady at 5 ms, then a second's pause: the frame before the pause
        // is written when its hold ends; after the pause frames that meet
        // go out at once for a while (the pause counts as quiet).
        let held = held(&mut c, &[5, 5, 5, 1000, 5, 5]);
        assert_eq!(held, [true, false, true, false, false, false]);
        assert!(c.spacing_us > 8_000, "{}", c.spacing_us);
    }

    #[test]
    fn one_late_frame_does_not_end_a_steady_rate() {
        let mut c = coalesce(0, 8, Some(Instant::now()));
        let held = held(&mut c, &[5, 5, 5, 5, 12, 5, 5, 5]);
        // The late one is written at once (quiet for more than the cap);
        // the next frame is held again.
        assert_eq!(held, [true, false, true, false, false, true, false, true]);
    }

    #[test]
    fn a_fixed_write_delay_holds_every_write_for_its_time() {
        let now = Instant::now();
        let hold = coalesce(300, 8, None).hold(now);
        assert_eq!(hold, Some((now + Duration::from_millis(300), false)));
    }
}
