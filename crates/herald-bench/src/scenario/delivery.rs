//! What `fanout` and `many-channels` share: the load (publishing rate,
//! timing, connection flags), the run itself (subscribers reading while
//! publishers publish, then a bounded wait for what is still in flight)
//! and the figures both report.

use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;
use tokio::task::JoinSet;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::publisher::{self, Clock, Plan, Published};
use super::{check_file_limit, check_server_pid, meter_window, plan_sources, publish_api};
use super::{ScenarioError, Usage, DRAIN_TIMEOUT};
use crate::api::Api;
use crate::client::{Client, Delivery};
use crate::report::{ErrorCounts, Table};
use crate::stats::{spawn_progress, Latency, Progress, Samples, Summary};
use crate::target::Target;

/// The load of a publishing scenario.
#[derive(Debug, Clone)]
pub struct Load {
    /// `X-API-Key` for the server API; `None` for a `--dev` server.
    pub api_key: Option<String>,
    /// Publish endpoint; the server API's `/api/publish` when `None`.
    pub publish_url: Option<String>,
    /// Publications per second, all publishers together.
    pub rate: f64,
    /// Concurrent HTTP publishers sharing the rate.
    pub publishers: usize,
    /// Size in bytes of each publication's JSON data (at least the stamp).
    pub payload: usize,
    pub duration: Duration,
    pub warmup: Duration,
    /// When the load starts (Unix time; now when `None`): processes given
    /// the same time measure the same window.
    pub start_at: Option<std::time::SystemTime>,
    /// Only subscribe and read: another process publishes (at `rate`, for
    /// the same window, `start_at`).
    pub listen_only: bool,
    pub progress: bool,
    /// The server's PID, to charge its CPU to the deliveries (a cluster's
    /// nodes: their CPU added up).
    pub server_pids: Vec<u32>,
    /// Loopback source addresses to spread connections over.
    pub source_ips: Option<usize>,
    pub connect_concurrency: usize,
}

impl Load {
    /// Checks the flags for a run of `connections` subscribers against
    /// `target`; returns the source addresses to bind and the publish API.
    pub(super) fn prepare(
        &self,
        connections: usize,
        target: &Target,
    ) -> Result<(Vec<IpAddr>, Api), ScenarioError> {
        publisher::check(self.rate, self.publishers, self.publish_url.as_deref())?;
        check_server_pid(&self.server_pids)?;
        check_file_limit(connections + self.publishers)?;
        let sources = plan_sources(connections, self.source_ips, target)?;
        let api = publish_api(target, &self.publish_url, &self.api_key)?;
        Ok((sources, api))
    }
}

/// The figures `fanout` and `many-channels` share (flattened into their
/// reports).
#[derive(Debug, Serialize)]
pub struct Delivered {
    /// Publications per second asked for, all publishers together.
    pub rate: f64,
    pub publishers: usize,
    pub payload_bytes: usize,
    pub warmup_s: f64,
    pub duration_s: f64,
    /// Publications the endpoint acknowledged over the whole run.
    pub published: u64,
    /// Acknowledged publications per second in the measured window.
    pub publish_rate: f64,
    pub publish_errors: ErrorCounts,
    /// Deliveries over the whole run.
    pub delivered: u64,
    /// Deliveries of publications sent in the measured window, per second.
    pub delivered_per_s: f64,
    /// Delivery latency of publications sent in the measured window.
    pub latency: Summary,
    /// Subscribers whose connection ended before the run did.
    pub subscribers_dropped: usize,
    pub subscriber_errors: ErrorCounts,
    /// CPU over the measured window; `operations` are deliveries received.
    pub usage: Usage,
    /// Server CPU-seconds per million deliveries (with `--server-pid`).
    pub server_cpu_s_per_million: Option<f64>,
    /// Of those, the seconds in the kernel.
    pub server_system_s_per_million: Option<f64>,
}

impl Delivered {
    /// Nothing failed and no subscriber dropped (losses are each
    /// scenario's own count).
    pub fn clean(&self) -> bool {
        self.subscribers_dropped == 0
            && self.publish_errors.total == 0
            && self.subscriber_errors.total == 0
    }

    pub fn nothing_done(&self) -> Option<&'static str> {
        (self.delivered == 0).then_some("no publication was delivered")
    }

    /// The load's rows of a report's table: payload, window, publishing.
    pub fn load_rows(&self, t: &mut Table) {
        t.row("payload", format_args!("{} bytes", self.payload_bytes))
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
            );
    }

    /// The rows after the scenario's own delivery counts, `lost` first.
    pub fn tail_rows(&self, t: &mut Table, lost: u64, out_of_order: Option<u64>) {
        t.latency("delivery latency", &self.latency)
            .row("lost", lost);
        if let Some(n) = out_of_order {
            t.row("out of order", n);
        }
        t.row("subscribers dropped", self.subscribers_dropped)
            .row("publish errors", self.publish_errors.total)
            .errors(&self.subscriber_errors)
            .usage(&self.usage)
            .cpu_per_million(
                "deliveries",
                self.server_cpu_s_per_million,
                self.server_system_s_per_million,
            );
    }
}

/// A finished run: the shared figures and what only some scenarios report.
pub(super) struct Outcome {
    pub delivered: Delivered,
    pub sent: Published,
    /// Deliveries whose sequence number was not above the previous one of
    /// the same publisher (counted only in an `ordered` run).
    pub out_of_order: u64,
    /// Over the subscribers, acknowledged publications each did not get
    /// (the losses when every subscriber should get every publication).
    pub missed_by_each: u64,
}

/// Subscribers in `clients` read while the load is published through
/// `api` for warm-up + duration (`pick`: see [`Plan::pick`]); then the run
/// waits (at most [`DRAIN_TIMEOUT`]) for the deliveries still in flight.
/// With `ordered`, each subscriber checks that every publisher's
/// publications arrive in order. Listening only, nothing is published and
/// the run waits until deliveries stop coming. Fails when the load was to
/// start before the subscribers were ready.
pub(super) async fn run<F>(
    load: &Load,
    api: &Api,
    clients: Vec<(usize, Client)>,
    ordered: bool,
    pick: F,
) -> Result<Outcome, ScenarioError>
where
    F: Fn(u64) -> (String, u64),
{
    let plan = Plan {
        api,
        rate: load.rate,
        publishers: load.publishers,
        payload: load.payload,
        pick,
    };
    let clock = Clock::starting_at(load.start_at, load.warmup, load.duration)?;
    let progress = Arc::new(Progress::default());
    let stop = CancellationToken::new();
    let ticker = load.progress.then(|| {
        spawn_progress(
            progress.clone(),
            "delivered",
            clock.window.measure_from,
            stop.clone(),
        )
    });
    let meter = meter_window(load.server_pids.clone(), clock.window, progress.clone());
    let delivered_total = Arc::new(AtomicU64::new(0));
    let order_of = if ordered { load.publishers } else { 0 };
    let mut subs = JoinSet::new();
    for (_, client) in clients {
        let (stop, progress, total) = (stop.clone(), progress.clone(), delivered_total.clone());
        subs.spawn(receive_loop(client, clock, order_of, stop, progress, total));
    }

    let mut sent = if load.listen_only {
        tokio::time::sleep_until(clock.window.end).await;
        Published::default()
    } else {
        publisher::run(&plan, clock, &progress).await
    };
    let usage = meter.await.unwrap_or_default();
    let drain_until = Instant::now() + DRAIN_TIMEOUT;
    if load.listen_only {
        // What is still coming is not known here: wait for a quiet moment.
        let mut before = u64::MAX;
        while delivered_total.load(Ordering::Relaxed) != before && Instant::now() < drain_until {
            before = delivered_total.load(Ordering::Relaxed);
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
    }
    while delivered_total.load(Ordering::Relaxed) < sent.expected && Instant::now() < drain_until {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    stop.cancel();

    let mut latency = Latency::new();
    let (mut delivered, mut out_of_order, mut missed_by_each) = (0, 0, 0);
    let mut subscriber_errors = ErrorCounts::default();
    let mut subscribers_dropped = 0;
    while let Some(joined) = subs.join_next().await {
        let r = joined.unwrap_or_else(Received::panicked);
        r.latency.add_to(&mut latency);
        delivered += r.delivered;
        out_of_order += r.out_of_order;
        missed_by_each += sent.acked.saturating_sub(r.delivered);
        subscriber_errors.merge(r.errors);
        subscribers_dropped += usize::from(r.dropped);
    }
    if let Some(t) = ticker {
        let _ = t.await;
    }
    let secs = load.duration.as_secs_f64().max(1e-9);
    let delivered = Delivered {
        rate: load.rate,
        publishers: load.publishers,
        payload_bytes: load.payload,
        warmup_s: load.warmup.as_secs_f64(),
        duration_s: load.duration.as_secs_f64(),
        published: sent.acked,
        publish_rate: sent.measured as f64 / secs,
        publish_errors: std::mem::take(&mut sent.errors),
        delivered,
        delivered_per_s: latency.count() as f64 / secs,
        latency: latency.summary(),
        subscribers_dropped,
        subscriber_errors,
        server_cpu_s_per_million: usage.server_cpu_s_per_million(),
        server_system_s_per_million: usage.server_system_s_per_million(),
        usage,
    };
    Ok(Outcome {
        delivered,
        sent,
        out_of_order,
        missed_by_each,
    })
}

/// What one subscriber measured.
#[derive(Default)]
struct Received {
    latency: Samples,
    delivered: u64,
    out_of_order: u64,
    errors: ErrorCounts,
    dropped: bool,
}

impl Received {
    /// The outcome of a subscriber task that panicked.
    fn panicked(e: tokio::task::JoinError) -> Self {
        let mut r = Received {
            dropped: true,
            ..Received::default()
        };
        r.errors.add("panic".into(), || e.to_string());
        r
    }
}

/// One subscriber: read publications until told to stop or disconnected.
/// Out-of-order deliveries are counted per publisher (`publishers` of
/// them; none when 0).
async fn receive_loop(
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
