//! One member of a chat room: a connection that publishes into its room
//! when told to, leaves and joins again when told to (then reads the room's
//! history and presence), and meanwhile reads everything the room sends.
//! Its commands are pipelined: it never waits for a reply before reading
//! on, so a delivery's latency is taken when it arrives. Latency counts
//! from when an action was told, so time spent waiting behind others counts
//! too. While in its room a member checks that every publisher's messages
//! come without gaps.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::Message;
use tokio_util::sync::CancellationToken;

use crate::client::{Client, ClientError, Delivery, Event};
use crate::protocol::{Ask, Protocol, Stamp};
use crate::report::ErrorCounts;
use crate::scenario::publisher::Clock;
use crate::scenario::{padded_object, REPLY_TIMEOUT};
use crate::stats::{Progress, Samples};

/// What the scenario's drivers tell a member to do, and when they told it
/// (microseconds on the run's clock).
pub type Told = (Action, u64);

/// What the scenario's drivers tell a member to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Publish a message into the room.
    Publish,
    /// Leave the room, join it again, read its history and presence.
    Rejoin,
}

/// The commands a member sends, each measured on its own.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    Publish,
    Unsubscribe,
    Subscribe,
    History,
    Presence,
}

impl Op {
    pub const ALL: [Op; 5] = [
        Op::Publish,
        Op::Unsubscribe,
        Op::Subscribe,
        Op::History,
        Op::Presence,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Op::Publish => "publish",
            Op::Unsubscribe => "unsubscribe",
            Op::Subscribe => "subscribe",
            Op::History => "history",
            Op::Presence => "presence",
        }
    }
}

/// Replies to one kind of command.
#[derive(Default, Clone)]
pub struct OpTally {
    /// Reply latency of the commands sent in the measured window.
    pub latency: Samples,
    /// Commands answered with success over the whole run.
    pub ok: u64,
    pub errors: ErrorCounts,
}

/// What one member measured.
#[derive(Default)]
pub struct Tally {
    /// Latency of the messages sent in the measured window.
    pub delivery: Samples,
    /// Messages received over the whole run.
    pub delivered: u64,
    /// Indexed like [`Op::ALL`].
    pub ops: [OpTally; 5],
    /// Messages due while the member was out of its room, not sent.
    pub skipped: u64,
    /// Actions still waiting when the run ended.
    pub unacted: u64,
    /// Messages missing between two of the same publisher's, counted while
    /// the member stayed in its room.
    pub lost: u64,
    /// Messages that came after a later one of the same publisher.
    pub reordered: u64,
    /// Messages that came twice.
    pub duplicated: u64,
    /// Of the messages acknowledged, those sent in the measured window.
    pub published_measured: u64,
    /// Connection-level errors (and publications without a stamp).
    pub errors: ErrorCounts,
    /// The connection ended before the run did.
    pub dropped: bool,
}

impl Tally {
    /// The outcome of a member task that panicked.
    pub fn panicked(e: tokio::task::JoinError) -> Self {
        let mut t = Tally {
            dropped: true,
            ..Tally::default()
        };
        t.errors.add("panic".into(), || e.to_string());
        t
    }
}

/// What every member shares.
pub struct Shared {
    pub clock: Clock,
    pub progress: Arc<Progress>,
    /// Actions told and not yet taken, and commands sent and not yet
    /// answered (with what they lead to), all members together.
    pub in_flight: AtomicU64,
    pub history_limit: u32,
    pub payload: usize,
}

/// Where a member is with respect to its room.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Place {
    In,
    Leaving,
    Joining,
    /// Joining again failed: the member stays out (and says so in errors).
    Out,
}

pub struct Member {
    /// The member's number, its stamps' publisher.
    pub index: u32,
    pub room: String,
    pub client: Client,
    place: Place,
    seq: u64,
    /// Commands awaiting their reply: id, what, when sent (stamp clock).
    pending: Vec<(u32, Op, u64)>,
    /// Per publisher, the newest sequence number seen since joining.
    seen: HashMap<u32, u64>,
    tally: Tally,
}

impl Member {
    /// A member already subscribed to `room`.
    pub fn new(index: u32, room: String, client: Client) -> Self {
        Self {
            index,
            room,
            client,
            place: Place::In,
            seq: 0,
            pending: Vec::new(),
            seen: HashMap::new(),
            tally: Tally::default(),
        }
    }

    /// Reads and acts until `stop`; then closes the connection.
    pub async fn run(
        mut self,
        mut actions: mpsc::Receiver<Told>,
        shared: Arc<Shared>,
        stop: CancellationToken,
    ) -> Tally {
        let mut driven = true;
        let ended = loop {
            let next_action = async {
                if driven {
                    actions.recv().await
                } else {
                    std::future::pending().await
                }
            };
            let step = tokio::select! {
                biased;
                _ = stop.cancelled() => break None,
                event = self.client.next_event() => match event {
                    Ok(event) => self.on_event(event, &shared).await,
                    Err(e) => Err(e),
                },
                told = next_action => match told {
                    Some((action, told_us)) => {
                        let r = self.act(action, told_us, &shared).await;
                        shared.in_flight.fetch_sub(1, Ordering::Relaxed);
                        r
                    }
                    None => {
                        driven = false;
                        Ok(())
                    }
                },
            };
            if let Err(e) = step {
                break Some(e);
            }
        };
        let why = match ended {
            Some(_) => "the connection ended first",
            None => "no reply before the run ended",
        };
        for (_, op, _) in std::mem::take(&mut self.pending) {
            shared.in_flight.fetch_sub(1, Ordering::Relaxed);
            self.tally.ops[op as usize]
                .errors
                .add("unanswered".into(), || why.into());
        }
        actions.close();
        while actions.try_recv().is_ok() {
            shared.in_flight.fetch_sub(1, Ordering::Relaxed);
            self.tally.unacted += 1;
        }
        match ended {
            Some(e) => {
                shared.progress.error();
                self.tally.errors.add(e.kind(), || e.to_string());
                self.tally.dropped = true;
            }
            None => {
                let _ = tokio::time::timeout(Duration::from_secs(1), self.client.close()).await;
            }
        }
        self.tally
    }

    /// Takes `action`, told at `told_us`.
    async fn act(
        &mut self,
        action: Action,
        told_us: u64,
        shared: &Shared,
    ) -> Result<(), ClientError> {
        match (action, self.place) {
            (Action::Publish, Place::In) => {
                let stamp = Stamp {
                    publisher: self.index,
                    seq: self.seq,
                    ts_us: told_us,
                };
                self.seq += 1;
                let data = padded_object(&stamp.members(), shared.payload);
                let room = &self.room;
                let line = (&mut self.client, &mut self.pending);
                send(line, Op::Publish, told_us, shared, |p, id| {
                    Some(p.publish(id, room, &data))
                })
                .await
            }
            (Action::Publish, _) => {
                self.tally.skipped += 1;
                Ok(())
            }
            (Action::Rejoin, Place::In) => {
                self.place = Place::Leaving;
                self.about_room(Op::Unsubscribe, told_us, shared).await
            }
            // Still on the way back (or out): nothing to leave.
            (Action::Rejoin, _) => Ok(()),
        }
    }

    async fn on_event(&mut self, event: Event, shared: &Shared) -> Result<(), ClientError> {
        let (id, error) = match event {
            Event::Delivery(Delivery::Stamped(s)) => {
                if self.place == Place::In {
                    check_order(&mut self.seen, &mut self.tally, s);
                }
                let now = shared.clock.now_us();
                let latency = Duration::from_micros(now.saturating_sub(s.ts_us));
                self.tally.delivered += 1;
                shared.progress.complete(latency);
                if shared.clock.measures_stamp(s.ts_us) {
                    self.tally.delivery.record(latency);
                }
                return Ok(());
            }
            Event::Delivery(Delivery::Unstamped(text)) => {
                shared.progress.error();
                self.tally.errors.add("unstamped".into(), || {
                    format!("publication without a stamp: {text}")
                });
                return Ok(());
            }
            Event::Reply { id, error } => (id, error),
        };
        let Some(at) = self.pending.iter().position(|(p, ..)| *p == id) else {
            return Ok(()); // a reply to a command sent before the run (none are left open)
        };
        let (_, op, sent_us) = self.pending.swap_remove(at);
        let tally = &mut self.tally.ops[op as usize];
        match &error {
            None => {
                tally.ok += 1;
                let measured = shared.clock.measures_stamp(sent_us);
                if measured {
                    let took = shared.clock.now_us().saturating_sub(sent_us);
                    tally.latency.record_us(took);
                }
                if op == Op::Publish && measured {
                    self.tally.published_measured += 1;
                }
            }
            Some(e) => {
                shared.progress.error();
                tally.errors.add(e.kind(), || e.to_string());
            }
        }
        let next = self.after(op, error.is_none(), shared).await;
        // Only now: what the reply led to is in flight in its place.
        shared.in_flight.fetch_sub(1, Ordering::Relaxed);
        next
    }

    /// What follows the reply to `op`.
    async fn after(&mut self, op: Op, ok: bool, shared: &Shared) -> Result<(), ClientError> {
        let now = shared.clock.now_us();
        match (op, ok) {
            // Left (or could not leave: then still in): join again.
            (Op::Unsubscribe, true) => {
                self.place = Place::Joining;
                self.about_room(Op::Subscribe, now, shared).await
            }
            (Op::Unsubscribe, false) => {
                self.place = Place::In;
                Ok(())
            }
            (Op::Subscribe, true) => {
                self.place = Place::In;
                self.seen.clear();
                self.about_room(Op::History, now, shared).await?;
                self.about_room(Op::Presence, now, shared).await
            }
            (Op::Subscribe, false) => {
                self.place = Place::Out;
                Ok(())
            }
            _ => Ok(()),
        }
    }

    /// Sends the command `op` about the room (not a publish: it carries a
    /// message).
    async fn about_room(&mut self, op: Op, at_us: u64, shared: &Shared) -> Result<(), ClientError> {
        let room = &self.room;
        let limit = shared.history_limit;
        let line = (&mut self.client, &mut self.pending);
        send(line, op, at_us, shared, |p, id| match op {
            Op::Subscribe => Some(p.subscribe(id, room)),
            Op::Unsubscribe => p.ask(id, room, Ask::Unsubscribe),
            Op::History => p.ask(id, room, Ask::History { limit }),
            Op::Presence => p.ask(id, room, Ask::Presence),
            Op::Publish => None,
        })
        .await
    }
}

/// Sends the command `build` makes as `op` on `line` (the client and its
/// commands awaiting replies), to be answered later; its latency counts
/// from `since_us`. A send the server does not take within the reply
/// timeout ends the member.
async fn send(
    line: (&mut Client, &mut Vec<(u32, Op, u64)>),
    op: Op,
    since_us: u64,
    shared: &Shared,
    build: impl FnOnce(Protocol, u32) -> Option<Message>,
) -> Result<(), ClientError> {
    let (client, pending) = line;
    let id = tokio::time::timeout(REPLY_TIMEOUT, client.send_command(build))
        .await
        .map_err(|_| ClientError::Timeout(REPLY_TIMEOUT, "send"))??;
    pending.push((id, op, since_us));
    shared.in_flight.fetch_add(1, Ordering::Relaxed);
    Ok(())
}

/// Counts a gap, a step back or a repeat in `s`'s publisher's messages,
/// given the newest sequence number `seen` of each.
fn check_order(seen: &mut HashMap<u32, u64>, t: &mut Tally, s: Stamp) {
    match seen.get(&s.publisher).copied() {
        Some(last) if s.seq == last => t.duplicated += 1,
        Some(last) if s.seq < last => {
            // A late one: it fills a gap counted before.
            t.reordered += 1;
            t.lost = t.lost.saturating_sub(1);
        }
        last => {
            t.lost += last.map_or(0, |last| s.seq - last - 1);
            seen.insert(s.publisher, s.seq);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gaps_repeats_and_late_messages_are_counted_per_publisher() {
        let (mut seen, mut t) = (HashMap::new(), Tally::default());
        let mut got = |publisher, seq| {
            let s = Stamp {
                publisher,
                seq,
                ts_us: 0,
            };
            check_order(&mut seen, &mut t, s);
        };
        // Publisher 1: 4, 5, 8 (6 and 7 missing), 8 again, then 6 late.
        // Publisher 2 starts at 40 (joined late): no gap before it.
        for (p, seq) in [(1, 4), (1, 5), (2, 40), (1, 8), (2, 41), (1, 8), (1, 6)] {
            got(p, seq);
        }
        assert_eq!((t.lost, t.duplicated, t.reordered), (1, 1, 1));
    }
}
