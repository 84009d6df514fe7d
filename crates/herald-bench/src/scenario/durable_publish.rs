//! `durable-publish`: N publisher connections, each publishing sequentially
//! (send, await the reply, repeat) into channels spread over a channel
//! prefix. Against a durable namespace the reply comes after the commit,
//! so this measures acknowledged durable writes; against a memory-history or
//! history-less namespace it measures plain publish.

use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;
use serde_json::value::RawValue;
use tokio::task::JoinSet;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::{check_file_limit, padded_object, Dialer, ScenarioError, Window};
use super::{CONNECT_CONCURRENCY, REPLY_TIMEOUT};
use crate::client::{Client, ClientError};
use crate::report::{ErrorCounts, Report, Table};
use crate::stats::{spawn_progress, Latency, Progress, Summary};
use crate::target::{Auth, Target};

/// What to run.
#[derive(Debug, Clone)]
pub struct Options {
    pub target: Target,
    pub auth: Auth,
    /// Channels are `<prefix>-0` … `<prefix>-<channels - 1>`.
    pub channel_prefix: String,
    pub channels: usize,
    pub publishers: usize,
    /// Size in bytes of each publication's JSON data.
    pub payload: usize,
    pub duration: Duration,
    pub warmup: Duration,
    /// Print the per-second progress line on stderr.
    pub progress: bool,
}

/// Every figure of a run.
#[derive(Debug, Serialize)]
pub struct DurablePublishReport {
    pub scenario: &'static str,
    pub url: String,
    pub channel_prefix: String,
    pub channels: usize,
    pub publishers: usize,
    pub payload_bytes: usize,
    pub warmup_s: f64,
    pub duration_s: f64,
    /// Publisher connections that opened and connected.
    pub connected: usize,
    pub connect_errors: ErrorCounts,
    /// Publications acknowledged, started inside the measured window.
    pub acked: u64,
    pub publications_per_s: f64,
    /// Publish round trip (send to reply) of the acknowledged publications.
    pub latency: Summary,
    /// Failed publishes over the whole run (warm-up included).
    pub errors: ErrorCounts,
    /// Publishers that stopped early on a lost connection or a timeout.
    pub publishers_stopped: usize,
}

impl Report for DurablePublishReport {
    fn clean(&self) -> bool {
        self.connected == self.publishers && self.errors.total == 0
    }
    fn nothing_done(&self) -> Option<&'static str> {
        (self.acked == 0).then_some("no publication was acknowledged")
    }
    fn table(&self) -> String {
        Table::new("herald-bench durable-publish")
            .row("url", &self.url)
            .row(
                "channels",
                format_args!("{} × {}-<n>", self.channels, self.channel_prefix),
            )
            .row(
                "publishers connected",
                format_args!("{} / {}", self.connected, self.publishers),
            )
            .row("payload", format_args!("{} bytes", self.payload_bytes))
            .row(
                "window",
                format_args!("{} s after {} s warm-up", self.duration_s, self.warmup_s),
            )
            .row("acknowledged", self.acked)
            .row(
                "publications/s",
                format_args!("{:.0}", self.publications_per_s),
            )
            .latency("publish latency", &self.latency)
            .errors(&self.errors)
            .row("publishers stopped", self.publishers_stopped)
            .finish()
    }
}

/// What one publisher measured.
#[derive(Default)]
struct Outcome {
    latency: Latency,
    errors: ErrorCounts,
    stopped: bool,
}

/// Runs the scenario to completion (warm-up + duration, plus at most one
/// reply timeout).
pub async fn run(o: &Options) -> Result<DurablePublishReport, ScenarioError> {
    if o.channels == 0 || o.publishers == 0 {
        return Err(ScenarioError::Invalid(
            "--channels and --publishers must be at least 1".into(),
        ));
    }
    check_file_limit(o.publishers)?;
    let opened = Dialer {
        target: &o.target,
        auth: &o.auth,
        sources: &[],
        concurrency: CONNECT_CONCURRENCY,
    }
    .open(o.publishers, |_| Vec::new(), &Progress::default())
    .await?
    .nonempty("publisher")?;
    let (clients, connect_errors) = (opened.clients, opened.errors);
    let connected = clients.len();
    let data: Arc<RawValue> = Arc::from(
        RawValue::from_string(padded_object("", o.payload)).expect("padded object is JSON"),
    );

    let window = Window::starting_now(o.warmup, o.duration);
    let progress = Arc::new(Progress::default());
    let stop = CancellationToken::new();
    let ticker = o
        .progress
        .then(|| spawn_progress(progress.clone(), "acked", window.measure_from, stop.clone()));
    let mut tasks = JoinSet::new();
    for (i, client) in clients {
        let channel = format!("{}-{}", o.channel_prefix, i % o.channels);
        tasks.spawn(publish_loop(
            client,
            channel,
            data.clone(),
            window,
            progress.clone(),
        ));
    }
    let mut latency = Latency::new();
    let mut errors = ErrorCounts::default();
    let mut publishers_stopped = 0;
    while let Some(joined) = tasks.join_next().await {
        let outcome = joined.unwrap_or_else(|e| {
            let mut o = Outcome {
                stopped: true,
                ..Outcome::default()
            };
            o.errors.add("panic".into(), || e.to_string());
            o
        });
        latency.merge(&outcome.latency);
        errors.merge(outcome.errors);
        publishers_stopped += usize::from(outcome.stopped);
    }
    stop.cancel();
    if let Some(t) = ticker {
        let _ = t.await;
    }
    let acked = latency.count();
    Ok(DurablePublishReport {
        scenario: "durable-publish",
        url: o.target.ws_url.clone(),
        channel_prefix: o.channel_prefix.clone(),
        channels: o.channels,
        publishers: o.publishers,
        payload_bytes: data.get().len(),
        warmup_s: o.warmup.as_secs_f64(),
        duration_s: o.duration.as_secs_f64(),
        connected,
        connect_errors,
        acked,
        publications_per_s: acked as f64 / o.duration.as_secs_f64().max(1e-9),
        latency: latency.summary(),
        errors,
        publishers_stopped,
    })
}

/// One publisher: publish, await the reply, repeat until the window ends.
/// Error replies are counted and publishing goes on; a lost connection or
/// a timeout stops this publisher.
async fn publish_loop(
    mut client: Client,
    channel: String,
    data: Arc<RawValue>,
    window: Window,
    progress: Arc<Progress>,
) -> Outcome {
    let mut out = Outcome::default();
    loop {
        let started = Instant::now();
        if started >= window.end {
            break;
        }
        match client.publish(&channel, data.get(), REPLY_TIMEOUT).await {
            Ok(()) => {
                let took = started.elapsed();
                progress.complete(took);
                if window.measures(started) {
                    out.latency.record(took);
                }
            }
            Err(e) => {
                progress.error();
                out.errors.add(e.kind(), || e.to_string());
                if !matches!(e, ClientError::Reply { .. }) {
                    out.stopped = true;
                    return out;
                }
            }
        }
    }
    let _ = tokio::time::timeout(Duration::from_secs(1), client.close()).await;
    out
}
