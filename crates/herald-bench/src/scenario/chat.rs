//! `chat`: the load of a chat service. Connections are members of rooms
//! whose sizes are drawn between `--room-min` and `--room-max`, each
//! subscribed to its room's channel `<prefix>room.<k>`. At a fixed total
//! rate a random member publishes a message into its room from the client
//! side (the `publish` command chat clients send); at another rate a random
//! member leaves its room and joins it again, then reads the room's history
//! and presence, as a client opening a room does. What the room keeps and
//! tells (presence, join/leave pushes, history) is the server's
//! configuration of the namespace.
//!
//! Reported: latency of every message to every member, each command's reply
//! latency, and server CPU per delivered message.

mod member;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use self::member::{Action, Member, Op, Shared, Tally, Told};
use super::publisher::{Clock, MAX_RATE};
use super::{check_file_limit, check_server_pid, meter_window, mix, plan_sources};
use super::{Dialer, ScenarioError, DRAIN_TIMEOUT};
use crate::protocol::Protocol;
use crate::report::{ErrorCounts, Report, Table};
use crate::stats::{spawn_progress, Latency, Progress, Summary, Usage};
use crate::target::{Auth, Target};

/// Actions a member may have waiting; a member further behind than this
/// loses the next ones (counted in `actions_dropped`).
const ACTION_QUEUE: usize = 64;

/// Once every command has its reply, how long the end of a run still
/// waits for messages on their way.
const SETTLE: Duration = Duration::from_millis(300);

/// What to run.
#[derive(Debug, Clone)]
pub struct Options {
    pub target: Target,
    pub auth: Auth,
    /// Rooms are `<prefix>room.<k>` (the prefix names the namespace, e.g.
    /// `chat:`).
    pub channel_prefix: String,
    pub connections: usize,
    pub room_min: usize,
    pub room_max: usize,
    /// Messages per second, all rooms together.
    pub rate: f64,
    /// Leave-and-join-again per second, all rooms together (0: none).
    pub rejoin_rate: f64,
    /// Publications a rejoining member asks the room's history for.
    pub history_limit: u32,
    /// Size in bytes of each message's data (at least the stamp).
    pub payload: usize,
    pub duration: Duration,
    pub warmup: Duration,
    pub progress: bool,
    pub server_pids: Vec<u32>,
    pub source_ips: Option<usize>,
    pub connect_concurrency: usize,
}

/// Replies to one kind of command, as reported.
#[derive(Debug, Serialize)]
pub struct Command {
    pub command: &'static str,
    /// Answered with success over the whole run.
    pub ok: u64,
    pub errors: ErrorCounts,
    /// Reply latency of the commands sent in the measured window.
    pub latency: Summary,
}

/// Every figure of a run.
#[derive(Debug, Serialize)]
pub struct ChatReport {
    pub scenario: &'static str,
    pub url: String,
    pub protocol: &'static str,
    pub connections: usize,
    pub connected: usize,
    pub connect_errors: ErrorCounts,
    pub rooms: usize,
    pub room_min: usize,
    pub room_max: usize,
    pub rate: f64,
    pub rejoin_rate: f64,
    pub history_limit: u32,
    pub payload_bytes: usize,
    pub warmup_s: f64,
    pub duration_s: f64,
    /// Acknowledged messages sent in the measured window, per second.
    pub publish_rate: f64,
    /// Messages due while their member was between leaving and joining
    /// (over the whole run).
    pub skipped: u64,
    /// Actions a member was too far behind to take, or still had waiting
    /// when the run ended.
    pub actions_dropped: u64,
    /// Messages missing between two of the same publisher's, as members
    /// that stayed in their room saw them (over the whole run).
    pub lost: u64,
    /// Messages that came after a later one of the same publisher.
    pub reordered: u64,
    /// Messages that came twice.
    pub duplicated: u64,
    /// Messages received over the whole run, all members together.
    pub delivered: u64,
    /// Deliveries of messages sent in the measured window, per second.
    pub delivered_per_s: f64,
    /// Delivery latency of messages sent in the measured window.
    pub latency: Summary,
    pub commands: Vec<Command>,
    pub members_dropped: usize,
    pub member_errors: ErrorCounts,
    /// CPU over the measured window; `operations` are deliveries.
    pub usage: Usage,
    pub server_cpu_s_per_million: Option<f64>,
    pub server_system_s_per_million: Option<f64>,
}

impl Report for ChatReport {
    fn clean(&self) -> bool {
        self.connected == self.connections
            && self.members_dropped == 0
            && self.member_errors.total == 0
            && self.actions_dropped == 0
            && self.lost == 0
            && self.duplicated == 0
            && self.commands.iter().all(|c| c.errors.total == 0)
    }

    fn nothing_done(&self) -> Option<&'static str> {
        (self.delivered == 0).then_some("no message was delivered")
    }

    fn table(&self) -> String {
        let mut t = Table::new("herald-bench chat");
        t.row("url", format_args!("{} ({})", self.url, self.protocol))
            .row(
                "members",
                format_args!(
                    "{} / {} in {} rooms of {} to {}",
                    self.connected, self.connections, self.rooms, self.room_min, self.room_max
                ),
            )
            .row("payload", format_args!("{} bytes", self.payload_bytes))
            .row(
                "window",
                format_args!("{} s after {} s warm-up", self.duration_s, self.warmup_s),
            )
            .row(
                "messages",
                format_args!(
                    "{:.1}/s acknowledged of {}/s asked ({} over the run skipped while away)",
                    self.publish_rate, self.rate, self.skipped
                ),
            )
            .row(
                "rejoins",
                format_args!(
                    "{}/s asked, history of {} on each",
                    self.rejoin_rate, self.history_limit
                ),
            )
            .row(
                "delivered/s",
                format_args!(
                    "{:.0} ({} over the run)",
                    self.delivered_per_s, self.delivered
                ),
            )
            .latency("message latency", &self.latency);
        for c in &self.commands {
            t.latency(&format!("{} reply", c.command), &c.latency);
            if c.errors.total > 0 {
                t.errors_named(&format!("{} errors", c.command), &c.errors);
            }
        }
        t.row(
            "lost / reordered / twice",
            format_args!("{} / {} / {}", self.lost, self.reordered, self.duplicated),
        )
        .row("actions dropped", self.actions_dropped)
        .row("members dropped", self.members_dropped)
        .errors(&self.member_errors)
        .usage(&self.usage)
        .cpu_per_million(
            "deliveries",
            self.server_cpu_s_per_million,
            self.server_system_s_per_million,
        );
        t.finish()
    }
}

/// The room of each of `connections` members: rooms are filled in turn,
/// room `k` taking between `min` and `max` members (drawn from `k`), the
/// last one what is left.
pub fn rooms(connections: usize, min: usize, max: usize) -> Vec<usize> {
    let mut room_of = Vec::with_capacity(connections);
    let mut k = 0;
    while room_of.len() < connections {
        let span = (max - min + 1) as u64;
        let size = min + (mix(k as u64) % span) as usize;
        let size = size.min(connections - room_of.len());
        room_of.extend(std::iter::repeat_n(k, size));
        k += 1;
    }
    room_of
}

fn validate(o: &Options) -> Result<(), ScenarioError> {
    let invalid = |why: &str| Err(ScenarioError::Invalid(why.into()));
    if o.connections == 0 || o.room_min == 0 || o.room_min > o.room_max {
        return invalid(
            "--connections and --room-min must be at least 1, --room-min at most --room-max",
        );
    }
    let rates_fit = o.rate > 0.0 && o.rate <= MAX_RATE && (0.0..=MAX_RATE).contains(&o.rejoin_rate);
    if !rates_fit {
        return invalid(&format!(
            "--rate must be in (0, {MAX_RATE}], --rejoin-rate in [0, {MAX_RATE}]"
        ));
    }
    if o.target.protocol == Protocol::Pusher {
        return invalid("chat needs replies to client publications and history, which Pusher has not; use a Centrifugo protocol");
    }
    Ok(())
}

/// Runs the scenario: connect every member into its room, drive messages
/// and rejoins for warm-up + duration, wait (bounded) for what is in
/// flight.
pub async fn run(o: &Options) -> Result<ChatReport, ScenarioError> {
    validate(o)?;
    check_server_pid(&o.server_pids)?;
    check_file_limit(o.connections)?;
    let sources = plan_sources(o.connections, o.source_ips, &o.target)?;
    let room_of = rooms(o.connections, o.room_min, o.room_max);
    let room = |k: usize| format!("{}room.{k}", o.channel_prefix);
    let dialer = Dialer {
        target: &o.target,
        auth: &o.auth,
        sources: &sources,
        concurrency: o.connect_concurrency,
    };
    let opened = dialer
        .open(
            o.connections,
            |i| vec![room(room_of[i])],
            &Progress::default(),
        )
        .await?
        .nonempty("member")?;
    let connected = opened.clients.len();

    let clock = Clock::starting_now(o.warmup, o.duration);
    let progress = Arc::new(Progress::default());
    let stop = CancellationToken::new();
    let ticker = o.progress.then(|| {
        spawn_progress(
            progress.clone(),
            "delivered",
            clock.window.measure_from,
            stop.clone(),
        )
    });
    let meter = meter_window(o.server_pids.clone(), clock.window, progress.clone());
    let shared = Arc::new(Shared {
        clock,
        progress: progress.clone(),
        in_flight: AtomicU64::new(0),
        history_limit: o.history_limit,
        payload: o.payload,
    });
    let mut members = JoinSet::new();
    let mut inboxes = Vec::with_capacity(connected);
    for (i, client) in opened.clients {
        let (tx, rx) = mpsc::channel(ACTION_QUEUE);
        inboxes.push(tx);
        let member = Member::new(i as u32, room(room_of[i]), client);
        members.spawn(member.run(rx, shared.clone(), stop.clone()));
    }

    let in_flight = &shared.in_flight;
    let (a, b) = tokio::join!(
        drive(&inboxes, o.rate, Action::Publish, clock, in_flight),
        drive(&inboxes, o.rejoin_rate, Action::Rejoin, clock, in_flight)
    );
    drop(inboxes);
    let usage = meter.await.unwrap_or_default();
    let drain_until = Instant::now() + DRAIN_TIMEOUT;
    while shared.in_flight.load(Ordering::Relaxed) > 0 && Instant::now() < drain_until {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    tokio::time::sleep(SETTLE).await;
    stop.cancel();

    let mut all = Tally::default();
    let mut delivery = Latency::new();
    let mut ops: [_; 5] = std::array::from_fn(|_| Latency::new());
    let mut members_dropped = 0;
    while let Some(joined) = members.join_next().await {
        let t = joined.unwrap_or_else(Tally::panicked);
        t.delivery.add_to(&mut delivery);
        all.delivered += t.delivered;
        all.skipped += t.skipped;
        all.unacted += t.unacted;
        all.lost += t.lost;
        all.reordered += t.reordered;
        all.duplicated += t.duplicated;
        all.published_measured += t.published_measured;
        all.errors.merge(t.errors);
        members_dropped += usize::from(t.dropped);
        for ((sum, latency), one) in all.ops.iter_mut().zip(&mut ops).zip(t.ops) {
            one.latency.add_to(latency);
            sum.ok += one.ok;
            sum.errors.merge(one.errors);
        }
    }
    if let Some(t) = ticker {
        let _ = t.await;
    }
    let secs = o.duration.as_secs_f64().max(1e-9);
    let commands = Op::ALL
        .iter()
        .zip(all.ops)
        .zip(ops)
        .map(|((op, t), latency)| Command {
            command: op.name(),
            ok: t.ok,
            errors: t.errors,
            latency: latency.summary(),
        })
        .collect();
    Ok(ChatReport {
        scenario: "chat",
        url: o.target.ws_url.clone(),
        protocol: o.target.protocol.name(),
        connections: o.connections,
        connected,
        connect_errors: opened.errors,
        rooms: room_of.last().map_or(0, |k| k + 1),
        room_min: o.room_min,
        room_max: o.room_max,
        rate: o.rate,
        rejoin_rate: o.rejoin_rate,
        history_limit: o.history_limit,
        payload_bytes: o.payload,
        warmup_s: o.warmup.as_secs_f64(),
        duration_s: o.duration.as_secs_f64(),
        publish_rate: all.published_measured as f64 / secs,
        skipped: all.skipped,
        actions_dropped: a + b + all.unacted,
        lost: all.lost,
        reordered: all.reordered,
        duplicated: all.duplicated,
        delivered: all.delivered,
        delivered_per_s: delivery.count() as f64 / secs,
        latency: delivery.summary(),
        commands,
        members_dropped,
        member_errors: all.errors,
        server_cpu_s_per_million: usage.server_cpu_s_per_million(),
        server_system_s_per_million: usage.server_system_s_per_million(),
        usage,
    })
}

/// Tells random members `action`, `rate` times a second (action `n` is due
/// `n / rate` after the start; late ones go at once) until the window
/// ends; returns how many a member was too far behind to take. Each action
/// told is in flight until its member has taken it. A rate of 0 tells none.
async fn drive(
    inboxes: &[mpsc::Sender<Told>],
    rate: f64,
    action: Action,
    clock: Clock,
    in_flight: &AtomicU64,
) -> u64 {
    if rate <= 0.0 || inboxes.is_empty() {
        return 0;
    }
    let start = Instant::now();
    // Publications and rejoins pick their members apart.
    let salt = match action {
        Action::Publish => 0,
        Action::Rejoin => 1 << 40,
    };
    let mut dropped = 0;
    for n in 0u64.. {
        let Ok(after) = Duration::try_from_secs_f64(n as f64 / rate) else {
            break;
        };
        let due = start + after;
        if due >= clock.window.end {
            break;
        }
        // Behind schedule, catch up without a timer (a timer fires on the
        // next millisecond tick at the earliest, which would cap the rate).
        if due > Instant::now() {
            tokio::time::sleep_until(due).await;
        }
        // Stamped as told: a member's wait to take it counts, the timer's
        // lateness (the load generator's, up to a millisecond) does not.
        let told_us = clock.now_us();
        let who = (mix(n + salt) % inboxes.len() as u64) as usize;
        in_flight.fetch_add(1, Ordering::Relaxed);
        if inboxes[who].try_send((action, told_us)).is_err() {
            in_flight.fetch_sub(1, Ordering::Relaxed);
            dropped += 1;
        }
    }
    dropped
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rooms_are_filled_in_turn_within_their_bounds() {
        let room_of = rooms(1000, 10, 50);
        assert_eq!(room_of.len(), 1000);
        let rooms = room_of.last().unwrap() + 1;
        let mut sizes = vec![0; rooms];
        for (i, k) in room_of.iter().enumerate() {
            sizes[*k] += 1;
            assert!(i == 0 || room_of[i - 1] <= *k, "rooms in turn");
        }
        let (last, full) = sizes.split_last().unwrap();
        assert!(full.iter().all(|s| (10..=50).contains(s)), "{sizes:?}");
        assert!((1..=50).contains(last));
        assert!(full.iter().any(|s| *s != full[0]), "sizes vary: {sizes:?}");
        assert_eq!(super::rooms(7, 3, 3), vec![0, 0, 0, 1, 1, 1, 2]);
    }
}
