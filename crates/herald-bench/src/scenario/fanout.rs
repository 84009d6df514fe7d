//! `fanout` (simple version): N subscribers on one channel; publications go
//! through the HTTP API at a fixed rate, each stamped with its send time, and
//! every subscriber measures delivery latency (receive time minus stamp).
//! Publisher and subscribers share this process's monotonic clock.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use tokio::task::JoinSet;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::{check_file_limit, open_many, padded_object, ScenarioError, Window};
use super::{CONNECT_TIMEOUT, DRAIN_TIMEOUT, REPLY_TIMEOUT};
use crate::api::Api;
use crate::client::{Client, ClientError};
use crate::report::{ErrorCounts, Report, Table};
use crate::stats::{spawn_progress, Latency, Progress, Summary};
use crate::target::{Auth, Target};

/// Highest publish rate accepted (publications per second); the publisher
/// sends one request at a time, so far less is reachable anyway.
pub const MAX_RATE: f64 = 100_000.0;

/// What to run.
#[derive(Debug, Clone)]
pub struct Options {
    pub target: Target,
    pub auth: Auth,
    /// `X-API-Key` for the server API; `None` for a `--dev` server.
    pub api_key: Option<String>,
    pub channel: String,
    pub subscribers: usize,
    /// Publications per second.
    pub rate: f64,
    /// Size in bytes of each publication's JSON data (at least the stamp).
    pub payload: usize,
    pub duration: Duration,
    pub warmup: Duration,
    pub progress: bool,
}

/// Every figure of a run.
#[derive(Debug, Serialize)]
pub struct FanoutReport {
    pub scenario: &'static str,
    pub url: String,
    pub channel: String,
    pub subscribers: usize,
    pub rate: f64,
    pub payload_bytes: usize,
    pub warmup_s: f64,
    pub duration_s: f64,
    pub connected: usize,
    pub connect_errors: ErrorCounts,
    /// Publications the API acknowledged over the whole run.
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
    /// Acknowledged publications a connected subscriber never received.
    pub lost: u64,
    /// Deliveries whose sequence number was not above the previous one.
    pub out_of_order: u64,
    /// Subscribers whose connection ended before the run did.
    pub subscribers_dropped: usize,
    pub subscriber_errors: ErrorCounts,
}

impl Report for FanoutReport {
    fn table(&self) -> String {
        Table::new("herald-bench fanout")
            .row("url", &self.url)
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
                    "{} ({:.1}/s of {}/s asked)",
                    self.published, self.publish_rate, self.rate
                ),
            )
            .row("delivered", self.delivered)
            .row("delivered/s", format_args!("{:.0}", self.delivered_per_s))
            .latency("delivery latency", &self.latency)
            .row("lost", self.lost)
            .row("out of order", self.out_of_order)
            .row("subscribers dropped", self.subscribers_dropped)
            .row("publish errors", self.publish_errors.total)
            .errors(&self.subscriber_errors)
            .finish()
    }
}

/// The stamp inside each publication.
#[derive(Deserialize)]
struct Stamp {
    seq: u64,
    /// Send time in microseconds since the run's clock origin.
    ts_us: u64,
}

/// What one subscriber measured.
#[derive(Default)]
struct Received {
    latency: Latency,
    delivered: u64,
    out_of_order: u64,
    errors: ErrorCounts,
    dropped: bool,
}

/// The run's shared clock: stamps are microseconds since `origin`.
#[derive(Clone, Copy)]
struct Clock {
    origin: Instant,
    window: Window,
}

impl Clock {
    fn now_us(&self) -> u64 {
        self.origin
            .elapsed()
            .as_micros()
            .try_into()
            .unwrap_or(u64::MAX)
    }

    fn measures_stamp(&self, ts_us: u64) -> bool {
        self.window
            .measures(self.origin + Duration::from_micros(ts_us))
    }
}

/// Runs the scenario: connect and subscribe everyone, publish for warm-up +
/// duration, then wait (at most [`DRAIN_TIMEOUT`]) for deliveries.
pub async fn run(o: &Options) -> Result<FanoutReport, ScenarioError> {
    if o.subscribers == 0 || !(o.rate > 0.0 && o.rate <= MAX_RATE) {
        return Err(ScenarioError::Invalid(format!(
            "--subscribers must be at least 1 and --rate in (0, {MAX_RATE}]"
        )));
    }
    check_file_limit(o.subscribers + 1)?;
    let api = Api::new(
        o.target.api_url("publish"),
        o.api_key.clone(),
        REPLY_TIMEOUT,
    )
    .map_err(|e| ScenarioError::Invalid(e.to_string()))?;
    let tokens = (0..o.subscribers)
        .map(|i| o.auth.token(i))
        .collect::<Result<Vec<_>, _>>()?;
    let (url, channel) = (&o.target.ws_url, &o.channel);
    let (clients, connect_errors, first) = open_many(o.subscribers, |i| {
        let token = &tokens[i];
        async move {
            let mut c = Client::connect(url, token, CONNECT_TIMEOUT).await?;
            c.subscribe(channel, CONNECT_TIMEOUT).await?;
            Ok(c)
        }
    })
    .await;
    if clients.is_empty() {
        return Err(ScenarioError::NoConnections(
            first.unwrap_or(ClientError::Lost("no subscriber".into())),
        ));
    }
    let connected = clients.len();

    let clock = Clock {
        origin: Instant::now(),
        window: Window::starting_now(o.warmup, o.duration),
    };
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
    let delivered_total = Arc::new(AtomicU64::new(0));
    let mut subs = JoinSet::new();
    for client in clients {
        let (stop, progress, total) = (stop.clone(), progress.clone(), delivered_total.clone());
        subs.spawn(receive_loop(client, clock, stop, progress, total));
    }

    let sent = publish_loop(&api, o, clock, &progress).await;

    // Wait for the deliveries still in flight, bounded.
    let expected = sent.published * connected as u64;
    let drain_until = Instant::now() + DRAIN_TIMEOUT;
    while delivered_total.load(Ordering::Relaxed) < expected && Instant::now() < drain_until {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    stop.cancel();

    let mut latency = Latency::new();
    let (mut delivered, mut out_of_order, mut lost) = (0, 0, 0);
    let mut subscriber_errors = ErrorCounts::default();
    let mut subscribers_dropped = 0;
    while let Some(joined) = subs.join_next().await {
        let r = joined.unwrap_or_else(|e| {
            let mut r = Received {
                dropped: true,
                ..Received::default()
            };
            r.errors.add("panic".into(), || e.to_string());
            r
        });
        latency.merge(&r.latency);
        delivered += r.delivered;
        out_of_order += r.out_of_order;
        lost += sent.published.saturating_sub(r.delivered);
        subscriber_errors.merge(r.errors);
        subscribers_dropped += usize::from(r.dropped);
    }
    if let Some(t) = ticker {
        let _ = t.await;
    }
    let secs = o.duration.as_secs_f64().max(1e-9);
    Ok(FanoutReport {
        scenario: "fanout",
        url: url.clone(),
        channel: channel.clone(),
        subscribers: o.subscribers,
        rate: o.rate,
        payload_bytes: o.payload,
        warmup_s: o.warmup.as_secs_f64(),
        duration_s: o.duration.as_secs_f64(),
        connected,
        connect_errors,
        published: sent.published,
        publish_rate: sent.measured as f64 / secs,
        publish_errors: sent.errors,
        delivered,
        delivered_per_s: latency.count() as f64 / secs,
        latency: latency.summary(),
        lost,
        out_of_order,
        subscribers_dropped,
        subscriber_errors,
    })
}

/// What the publisher did.
struct Sent {
    published: u64,
    /// Acknowledged publications sent in the measured window.
    measured: u64,
    errors: ErrorCounts,
}

/// Publishes one request at a time on a fixed schedule (`k / rate` after
/// the start) until the window ends; when the server is slower than the
/// schedule, it publishes as fast as replies come and the achieved rate
/// falls short of the asked one.
async fn publish_loop(api: &Api, o: &Options, clock: Clock, progress: &Progress) -> Sent {
    let interval = Duration::from_secs_f64(1.0 / o.rate);
    let start = Instant::now();
    let mut sent = Sent {
        published: 0,
        measured: 0,
        errors: ErrorCounts::default(),
    };
    for seq in 0u64.. {
        let due = start + interval.mul_f64(seq as f64);
        // Behind schedule, the publisher does not catch up after the end:
        // the achieved rate is the figure to read then.
        if due >= clock.window.end || Instant::now() >= clock.window.end {
            break;
        }
        tokio::time::sleep_until(due).await;
        let ts_us = clock.now_us();
        let data = padded_object(&format!("\"seq\":{seq},\"ts_us\":{ts_us}"), o.payload);
        let data = RawValue::from_string(data).expect("padded object is JSON");
        progress.sent.fetch_add(1, Ordering::Relaxed);
        match api.publish(&o.channel, &data).await {
            Ok(()) => {
                sent.published += 1;
                sent.measured += u64::from(clock.measures_stamp(ts_us));
            }
            Err(e) => {
                progress.error();
                sent.errors.add(e.kind(), || e.to_string());
            }
        }
    }
    sent
}

/// One subscriber: read publications until told to stop or disconnected.
async fn receive_loop(
    mut client: Client,
    clock: Clock,
    stop: CancellationToken,
    progress: Arc<Progress>,
    delivered_total: Arc<AtomicU64>,
) -> Received {
    let mut r = Received::default();
    let mut last_seq = None;
    loop {
        let publication = tokio::select! {
            biased;
            _ = stop.cancelled() => break,
            p = client.next_publication() => p,
        };
        let publication = match publication {
            Ok(p) => p,
            Err(e) => {
                progress.error();
                r.errors.add(e.kind(), || e.to_string());
                r.dropped = true;
                return r;
            }
        };
        // Someone else's publication in the channel is counted, not fatal.
        let Ok(s) = serde_json::from_str::<Stamp>(publication.data.get()) else {
            progress.error();
            r.errors.add("unstamped".into(), || {
                format!(
                    "publication without seq/ts_us: {:.100}",
                    publication.data.get()
                )
            });
            continue;
        };
        let latency = Duration::from_micros(clock.now_us().saturating_sub(s.ts_us));
        r.delivered += 1;
        delivered_total.fetch_add(1, Ordering::Relaxed);
        progress.complete(latency);
        if clock.measures_stamp(s.ts_us) {
            r.latency.record(latency);
        }
        if last_seq.is_some_and(|l| s.seq <= l) {
            r.out_of_order += 1;
        }
        last_seq = Some(s.seq);
    }
    let _ = tokio::time::timeout(Duration::from_secs(1), client.close()).await;
    r
}
