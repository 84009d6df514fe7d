//! `fanout`: N subscribers on one channel; publications go through an HTTP
//! publish endpoint at a fixed rate, each stamped with its send time, and
//! every subscriber measures delivery latency (receive time minus stamp).
//! Publishers and subscribers share this process's monotonic clock. With
//! `--server-pid`, the server's CPU over the measured window is charged to
//! the deliveries made in it.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;
use tokio::task::JoinSet;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::publisher::{self, Clock, Plan};
use super::{check_file_limit, check_server_pid, meter_window, plan_sources, publish_api};
use super::{Dialer, Opened, ScenarioError, Usage, DRAIN_TIMEOUT};
use crate::client::{Client, Delivery};
use crate::report::{ErrorCounts, Report, Table};
use crate::stats::{spawn_progress, Latency, Progress, Summary};
use crate::target::{Auth, Target};

/// A run "keeps up" when it delivers at least this share of what was
/// offered, loses nothing, drops no subscriber and its p99 stays under
/// [`KEEP_UP_P99`].
pub const KEEP_UP_SHARE: f64 = 0.95;
pub const KEEP_UP_P99: Duration = Duration::from_millis(250);

/// What to run.
#[derive(Debug, Clone)]
pub struct Options {
    pub target: Target,
    /// Other nodes of the same cluster: subscribers are spread evenly over
    /// `target` and these; publications go through `target`.
    pub other_nodes: Vec<Target>,
    pub auth: Auth,
    /// `X-API-Key` for the server API; `None` for a `--dev` server.
    pub api_key: Option<String>,
    /// Publish endpoint; the server API's `/api/publish` when `None`.
    pub publish_url: Option<String>,
    pub channel: String,
    pub subscribers: usize,
    /// Publications per second.
    pub rate: f64,
    /// Concurrent HTTP publishers sharing the rate.
    pub publishers: usize,
    /// Size in bytes of each publication's JSON data (at least the stamp).
    pub payload: usize,
    pub duration: Duration,
    pub warmup: Duration,
    pub progress: bool,
    /// The server's PID, to charge its CPU to the deliveries.
    pub server_pid: Option<u32>,
    /// Loopback source addresses to spread connections over.
    pub source_ips: Option<usize>,
    pub connect_concurrency: usize,
}

/// Every figure of a run.
#[derive(Debug, Serialize)]
pub struct FanoutReport {
    pub scenario: &'static str,
    pub url: String,
    /// Nodes the subscribers were spread over.
    pub nodes: usize,
    pub protocol: &'static str,
    pub channel: String,
    pub subscribers: usize,
    pub rate: f64,
    pub publishers: usize,
    pub payload_bytes: usize,
    pub warmup_s: f64,
    pub duration_s: f64,
    pub connected: usize,
    pub connect_errors: ErrorCounts,
    /// Publications the endpoint acknowledged over the whole run.
    pub published: u64,
    /// Acknowledged publications per second in the measured window.
    pub publish_rate: f64,
    pub publish_errors: ErrorCounts,
    /// Deliveries asked for: rate × connected subscribers.
    pub offered_per_s: f64,
    /// Deliveries over the whole run.
    pub delivered: u64,
    /// Deliveries of publications sent in the measured window, per second.
    pub delivered_per_s: f64,
    /// Delivery latency of publications sent in the measured window.
    pub latency: Summary,
    /// Acknowledged publications a connected subscriber never received.
    pub lost: u64,
    /// Deliveries whose sequence number was not above the previous one of
    /// the same publisher.
    pub out_of_order: u64,
    /// Subscribers whose connection ended before the run did.
    pub subscribers_dropped: usize,
    pub subscriber_errors: ErrorCounts,
    /// CPU over the measured window; `operations` are deliveries received.
    pub usage: Usage,
    /// Server CPU-seconds per million deliveries (with `--server-pid`).
    pub server_cpu_s_per_million: Option<f64>,
    /// Whether the server kept up (see [`KEEP_UP_SHARE`]).
    pub kept_up: bool,
}

impl Report for FanoutReport {
    fn clean(&self) -> bool {
        self.connected == self.subscribers
            && self.lost == 0
            && self.subscribers_dropped == 0
            && self.publish_errors.total == 0
            && self.subscriber_errors.total == 0
    }
    fn nothing_done(&self) -> Option<&'static str> {
        (self.delivered == 0).then_some("no publication was delivered")
    }
    fn table(&self) -> String {
        let mut t = Table::new("herald-bench fanout");
        t.row("url", format_args!("{} ({})", self.url, self.protocol))
            .row("nodes", self.nodes)
            .row("channel", &self.channel)
            .row(
                "subscribers connected",
                format_args!("{} / {}", self.connected, self.subscribers),
            )
            .row("payload", format_args!("{} bytes", self.payload_bytes))
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
            .row("delivered", self.delivered)
            .row(
                "delivered/s",
                format_args!(
                    "{:.0} of {:.0} offered",
                    self.delivered_per_s, self.offered_per_s
                ),
            )
            .latency("delivery latency", &self.latency)
            .row("lost", self.lost)
            .row("out of order", self.out_of_order)
            .row("subscribers dropped", self.subscribers_dropped)
            .row("publish errors", self.publish_errors.total)
            .errors(&self.subscriber_errors)
            .usage(&self.usage);
        if let Some(c) = self.server_cpu_s_per_million {
            t.row("server CPU per 1M deliveries", format_args!("{c:.2} s"));
        }
        t.row("kept up", self.kept_up).finish()
    }
}

/// What one subscriber measured.
#[derive(Default)]
pub(super) struct Received {
    pub latency: Latency,
    pub delivered: u64,
    pub out_of_order: u64,
    pub errors: ErrorCounts,
    pub dropped: bool,
}

impl Received {
    /// The outcome of a subscriber task that panicked.
    pub fn panicked(e: tokio::task::JoinError) -> Self {
        let mut r = Received {
            dropped: true,
            ..Received::default()
        };
        r.errors.add("panic".into(), || e.to_string());
        r
    }
}

fn validate(o: &Options) -> Result<(), ScenarioError> {
    if o.subscribers == 0 {
        return Err(ScenarioError::Invalid(
            "--subscribers must be at least 1".into(),
        ));
    }
    publisher::check(o.rate, o.publishers, o.publish_url.as_deref())?;
    check_server_pid(o.server_pid)?;
    check_file_limit(o.subscribers + o.publishers)
}

/// Runs the scenario: connect and subscribe everyone, publish for warm-up +
/// duration, then wait (at most [`DRAIN_TIMEOUT`]) for deliveries.
pub async fn run(o: &Options) -> Result<FanoutReport, ScenarioError> {
    validate(o)?;
    let sources = plan_sources(o.subscribers, o.source_ips, &o.target)?;
    let api = publish_api(&o.target, &o.publish_url, &o.api_key)?;
    let nodes: Vec<&Target> = std::iter::once(&o.target).chain(&o.other_nodes).collect();
    let mut opened = Opened::default();
    for (i, target) in nodes.iter().enumerate() {
        // Subscribers split evenly, the first nodes taking the remainder.
        let share = o.subscribers / nodes.len() + usize::from(i < o.subscribers % nodes.len());
        let dialer = Dialer {
            target,
            auth: &o.auth,
            sources: &sources,
            concurrency: o.connect_concurrency,
        };
        let more = dialer
            .open(share, |_| vec![o.channel.clone()], &Progress::default())
            .await?;
        opened.merge(more);
    }
    let opened = opened.nonempty("subscriber")?;
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
    let meter = meter_window(o.server_pid, clock.window, progress.clone());
    let delivered_total = Arc::new(AtomicU64::new(0));
    let mut subs = JoinSet::new();
    for (_, client) in opened.clients {
        let (stop, progress, total) = (stop.clone(), progress.clone(), delivered_total.clone());
        subs.spawn(receive_loop(
            client,
            clock,
            o.publishers,
            stop,
            progress,
            total,
        ));
    }

    let plan = Plan {
        api: &api,
        rate: o.rate,
        publishers: o.publishers,
        payload: o.payload,
        pick: |_| (o.channel.clone(), connected as u64),
    };
    let sent = publisher::run(&plan, clock, &progress).await;
    let usage = meter.await.unwrap_or_default();

    // Wait for the deliveries still in flight, bounded.
    let drain_until = Instant::now() + DRAIN_TIMEOUT;
    while delivered_total.load(Ordering::Relaxed) < sent.expected && Instant::now() < drain_until {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    stop.cancel();

    let mut latency = Latency::new();
    let (mut delivered, mut out_of_order, mut lost) = (0, 0, 0);
    let mut subscriber_errors = ErrorCounts::default();
    let mut subscribers_dropped = 0;
    while let Some(joined) = subs.join_next().await {
        let r = joined.unwrap_or_else(Received::panicked);
        latency.merge(&r.latency);
        delivered += r.delivered;
        out_of_order += r.out_of_order;
        lost += sent.acked.saturating_sub(r.delivered);
        subscriber_errors.merge(r.errors);
        subscribers_dropped += usize::from(r.dropped);
    }
    if let Some(t) = ticker {
        let _ = t.await;
    }
    let secs = o.duration.as_secs_f64().max(1e-9);
    let offered_per_s = o.rate * connected as f64;
    let delivered_per_s = latency.count() as f64 / secs;
    let latency = latency.summary();
    let kept_up = delivered_per_s >= KEEP_UP_SHARE * offered_per_s
        && lost == 0
        && subscribers_dropped == 0
        && latency.p99_us <= KEEP_UP_P99.as_micros() as u64;
    Ok(FanoutReport {
        scenario: "fanout",
        url: o.target.ws_url.clone(),
        nodes: nodes.len(),
        protocol: o.target.protocol.name(),
        channel: o.channel.clone(),
        subscribers: o.subscribers,
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
        offered_per_s,
        delivered,
        delivered_per_s,
        latency,
        lost,
        out_of_order,
        subscribers_dropped,
        subscriber_errors,
        server_cpu_s_per_million: usage.server_cpu_s_per_million(),
        usage,
        kept_up,
    })
}

/// One subscriber: read publications until told to stop or disconnected.
/// Out-of-order deliveries are counted per publisher (`publishers` of them).
pub(super) async fn receive_loop(
    mut client: Client,
    clock: Clock,
    publishers: usize,
    stop: CancellationToken,
    progress: Arc<Progress>,
    delivered_total: Arc<AtomicU64>,
) -> Received {
    let mut r = Received::default();
    let mut last_seq: Vec<Option<u64>> = vec![None; publishers];
    loop {
        let delivery = tokio::select! {
            biased;
            _ = stop.cancelled() => break,
            d = client.next_delivery() => d,
        };
        let s = match delivery {
            Ok(Delivery::Stamped(s)) => s,
            // Someone else's publication in the channel is counted, not fatal.
            Ok(Delivery::Unstamped(text)) => {
                progress.error();
                r.errors.add("unstamped".into(), || {
                    format!("publication without a stamp: {text}")
                });
                continue;
            }
            Err(e) => {
                progress.error();
                r.errors.add(e.kind(), || e.to_string());
                r.dropped = true;
                return r;
            }
        };
        let latency = Duration::from_micros(clock.now_us().saturating_sub(s.ts_us));
        r.delivered += 1;
        delivered_total.fetch_add(1, Ordering::Relaxed);
        progress.complete(latency);
        if clock.measures_stamp(s.ts_us) {
            r.latency.record(latency);
        }
        if let Some(last) = last_seq.get_mut(s.publisher as usize) {
            if last.is_some_and(|l| s.seq <= l) {
                r.out_of_order += 1;
            }
            *last = Some(s.seq);
        }
    }
    let _ = tokio::time::timeout(Duration::from_secs(1), client.close()).await;
    r
}
