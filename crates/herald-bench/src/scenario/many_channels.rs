//! `many-channels`: connection i subscribes to its personal channel
//! `<prefix>u.<i>` and to its group's `<prefix>g.<i / group-size>`;
//! publications go, at a fixed total rate, to a random group channel (with
//! probability `--group-ratio`) or a random personal channel. The deliveries
//! each acknowledged publication should make are counted exactly, so losses
//! are exact too.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;
use tokio::task::JoinSet;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::fanout::{receive_loop, Received};
use super::publisher::{self, Clock, Plan};
use super::{check_file_limit, check_server_pid, meter_window, plan_sources, publish_api};
use super::{Dialer, ScenarioError, Usage, DRAIN_TIMEOUT};
use crate::report::{ErrorCounts, Report, Table};
use crate::stats::{spawn_progress, Latency, Progress, Summary};
use crate::target::{Auth, Target};

/// What to run.
#[derive(Debug, Clone)]
pub struct Options {
    pub target: Target,
    pub auth: Auth,
    pub api_key: Option<String>,
    pub publish_url: Option<String>,
    /// Channel names start with this (e.g. a namespace `ns:`).
    pub channel_prefix: String,
    pub connections: usize,
    pub group_size: usize,
    /// Share of publications that go to a group channel (0..=1).
    pub group_ratio: f64,
    pub rate: f64,
    pub publishers: usize,
    pub payload: usize,
    pub duration: Duration,
    pub warmup: Duration,
    pub progress: bool,
    pub server_pid: Option<u32>,
    pub source_ips: Option<usize>,
    pub connect_concurrency: usize,
}

/// Every figure of a run.
#[derive(Debug, Serialize)]
pub struct ManyChannelsReport {
    pub scenario: &'static str,
    pub url: String,
    pub protocol: &'static str,
    pub connections: usize,
    pub group_size: usize,
    pub group_ratio: f64,
    pub rate: f64,
    pub publishers: usize,
    pub payload_bytes: usize,
    pub warmup_s: f64,
    pub duration_s: f64,
    pub connected: usize,
    pub connect_errors: ErrorCounts,
    pub published: u64,
    pub publish_rate: f64,
    pub publish_errors: ErrorCounts,
    /// Deliveries the acknowledged publications should have made.
    pub expected: u64,
    pub delivered: u64,
    /// Deliveries of publications sent in the measured window, per second.
    pub delivered_per_s: f64,
    pub latency: Summary,
    /// Expected deliveries that never arrived.
    pub lost: u64,
    pub subscribers_dropped: usize,
    pub subscriber_errors: ErrorCounts,
    pub usage: Usage,
    pub server_cpu_s_per_million: Option<f64>,
}

impl Report for ManyChannelsReport {
    fn clean(&self) -> bool {
        self.connected == self.connections
            && self.lost == 0
            && self.subscribers_dropped == 0
            && self.publish_errors.total == 0
            && self.subscriber_errors.total == 0
    }
    fn nothing_done(&self) -> Option<&'static str> {
        (self.delivered == 0).then_some("no publication was delivered")
    }
    fn table(&self) -> String {
        let mut t = Table::new("herald-bench many-channels");
        t.row("url", format_args!("{} ({})", self.url, self.protocol))
            .row(
                "connections",
                format_args!(
                    "{} / {}, groups of {}, {:.0}% to groups",
                    self.connected,
                    self.connections,
                    self.group_size,
                    self.group_ratio * 100.0
                ),
            )
            .row(
                "window",
                format_args!("{} s after {} s warm-up", self.duration_s, self.warmup_s),
            )
            .row(
                "published",
                format_args!(
                    "{} ({:.1}/s of {}/s asked, {} publishers)",
                    self.published, self.publish_rate, self.rate, self.publishers
                ),
            )
            .row(
                "delivered",
                format_args!("{} of {} expected", self.delivered, self.expected),
            )
            .row("delivered/s", format_args!("{:.0}", self.delivered_per_s))
            .latency("delivery latency", &self.latency)
            .row("lost", self.lost)
            .row("subscribers dropped", self.subscribers_dropped)
            .row("publish errors", self.publish_errors.total)
            .errors(&self.subscriber_errors)
            .usage(&self.usage);
        if let Some(c) = self.server_cpu_s_per_million {
            t.row("server CPU per 1M deliveries", format_args!("{c:.2} s"));
        }
        t.finish()
    }
}

/// A well-mixed 64-bit hash (splitmix64), so publication `n` picks its
/// channel reproducibly without a random number generator.
fn mix(n: u64) -> u64 {
    let mut z = n.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

fn validate(o: &Options) -> Result<(), ScenarioError> {
    if o.connections == 0 || o.group_size == 0 || !(0.0..=1.0).contains(&o.group_ratio) {
        return Err(ScenarioError::Invalid(
            "--connections and --group-size must be at least 1, --group-ratio in [0, 1]".into(),
        ));
    }
    super::publisher::check(o.rate, o.publishers, o.publish_url.as_deref())?;
    check_server_pid(o.server_pid)?;
    check_file_limit(o.connections + o.publishers)
}

/// Runs the scenario: connect and subscribe everyone, publish for warm-up +
/// duration, wait (bounded) for the expected deliveries.
pub async fn run(o: &Options) -> Result<ManyChannelsReport, ScenarioError> {
    validate(o)?;
    let sources = plan_sources(o.connections, o.source_ips, &o.target)?;
    let api = publish_api(&o.target, &o.publish_url, &o.api_key)?;
    let dialer = Dialer {
        target: &o.target,
        auth: &o.auth,
        sources: &sources,
        concurrency: o.connect_concurrency,
    };
    let (prefix, g) = (&o.channel_prefix, o.group_size);
    let opened = dialer
        .open(
            o.connections,
            |i| vec![format!("{prefix}u.{i}"), format!("{prefix}g.{}", i / g)],
            &Progress::default(),
        )
        .await?;
    let opened = opened.nonempty("connection")?;
    let connected = opened.clients.len();
    // Who is there to receive: members per group, and each personal channel.
    let groups = o.connections.div_ceil(g);
    let mut members = vec![0u64; groups];
    let mut present = vec![false; o.connections];
    for (i, _) in &opened.clients {
        members[i / g] += 1;
        present[*i] = true;
    }

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
    let meter = meter_window(o.server_pid, clock.window, progress.clone());
    let delivered_total = Arc::new(AtomicU64::new(0));
    let mut subs = JoinSet::new();
    for (_, client) in opened.clients {
        let (stop, progress, total) = (stop.clone(), progress.clone(), delivered_total.clone());
        subs.spawn(receive_loop(client, clock, 0, stop, progress, total));
    }
    let threshold = (o.group_ratio * 1_000_000.0) as u64;
    let plan = Plan {
        api: &api,
        rate: o.rate,
        publishers: o.publishers,
        payload: o.payload,
        pick: |n| {
            let h = mix(n);
            let pick = (h >> 24) as usize;
            if h % 1_000_000 < threshold {
                let k = pick % groups;
                (format!("{prefix}g.{k}"), members[k])
            } else {
                let k = pick % o.connections;
                (format!("{prefix}u.{k}"), u64::from(present[k]))
            }
        },
    };
    let sent = publisher::run(&plan, clock, &progress).await;
    let usage = meter.await.unwrap_or_default();
    let drain_until = Instant::now() + DRAIN_TIMEOUT;
    while delivered_total.load(Ordering::Relaxed) < sent.expected && Instant::now() < drain_until {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    stop.cancel();

    let mut latency = Latency::new();
    let mut delivered = 0;
    let mut subscriber_errors = ErrorCounts::default();
    let mut subscribers_dropped = 0;
    while let Some(joined) = subs.join_next().await {
        let r = joined.unwrap_or_else(Received::panicked);
        latency.merge(&r.latency);
        delivered += r.delivered;
        subscriber_errors.merge(r.errors);
        subscribers_dropped += usize::from(r.dropped);
    }
    if let Some(t) = ticker {
        let _ = t.await;
    }
    let secs = o.duration.as_secs_f64().max(1e-9);
    Ok(ManyChannelsReport {
        scenario: "many-channels",
        url: o.target.ws_url.clone(),
        protocol: o.target.protocol.name(),
        connections: o.connections,
        group_size: o.group_size,
        group_ratio: o.group_ratio,
        rate: o.rate,
        publishers: o.publishers,
        payload_bytes: o.payload,
        warmup_s: o.warmup.as_secs_f64(),
        duration_s: o.duration.as_secs_f64(),
        connected,
        connect_errors: opened.errors,
        published: sent.acked,
        publish_rate: sent.measured as f64 / secs,
        publish_errors: sent.errors,
        expected: sent.expected,
        delivered,
        delivered_per_s: latency.count() as f64 / secs,
        latency: latency.summary(),
        lost: sent.expected.saturating_sub(delivered),
        subscribers_dropped,
        subscriber_errors,
        server_cpu_s_per_million: usage.server_cpu_s_per_million(),
        usage,
    })
}
