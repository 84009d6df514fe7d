//! `idle`: N connections, each subscribed to its own channel, held open
//! without traffic. With `--server-pid`, the server's resident memory is
//! read before connecting, after a settle time and after a hold time, and
//! divided by the connections: the memory an idle subscribed connection
//! costs. The connections answer the server's pings meanwhile.

use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;
use tokio::task::JoinSet;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::{check_file_limit, check_server_pid, meter_until, plan_sources, Dialer};
use super::{ScenarioError, Usage};
use crate::procfs::Process;
use crate::report::{ErrorCounts, Report, Table};
use crate::stats::{spawn_progress, Progress, Summary};
use crate::target::{Auth, Target, Transport};

/// What to run.
#[derive(Debug, Clone)]
pub struct Options {
    pub target: Target,
    pub auth: Auth,
    pub connections: usize,
    /// Connection i subscribes to `<prefix>.<i>`, or `<prefix>.<i mod
    /// channels>` when `channels` is above 0.
    pub channel_prefix: String,
    pub channels: usize,
    /// Time after the last connection opened before the first reading.
    pub settle: Duration,
    /// Time the connections are then held before the second reading.
    pub hold: Duration,
    /// The server's PID (a cluster's nodes: their memory and CPU added up).
    pub server_pids: Vec<u32>,
    pub source_ips: Option<usize>,
    pub connect_concurrency: usize,
    pub progress: bool,
}

/// Every figure of a run.
#[derive(Debug, Serialize)]
pub struct IdleReport {
    pub scenario: &'static str,
    pub url: String,
    pub protocol: &'static str,
    pub transport: Transport,
    pub connections: usize,
    /// Distinct channels (0: one per connection).
    pub channels: usize,
    pub connected: usize,
    pub connect_errors: ErrorCounts,
    /// Seconds it took to open and subscribe every connection.
    pub connect_s: f64,
    /// Connect + subscribe time per connection.
    pub connect_latency: Summary,
    pub source_ips: usize,
    /// Server resident memory in bytes (with `--server-pid`).
    pub rss_before: Option<u64>,
    pub rss_after_settle: Option<u64>,
    pub rss_after_hold: Option<u64>,
    /// (after hold − before) ÷ connected.
    pub rss_per_connection: Option<u64>,
    /// CPU while the connections were held.
    pub usage_hold: Usage,
    /// Connections that ended before the run did.
    pub dropped: usize,
    pub errors: ErrorCounts,
}

impl Report for IdleReport {
    fn clean(&self) -> bool {
        self.connected == self.connections && self.dropped == 0
    }
    fn table(&self) -> String {
        let mib = |b: Option<u64>| {
            b.map_or("not measured (pass --server-pid)".into(), |b| {
                format!("{:.1} MiB", b as f64 / 1048576.0)
            })
        };
        Table::new("herald-bench idle")
            .row(
                "url",
                format_args!("{} ({}, {:?})", self.url, self.protocol, self.transport),
            )
            .row(
                "connected",
                format_args!(
                    "{} / {} in {:.2} s from {} source address(es)",
                    self.connected,
                    self.connections,
                    self.connect_s,
                    self.source_ips.max(1)
                ),
            )
            .latency("connect + subscribe", &self.connect_latency)
            .row("server RSS before", mib(self.rss_before))
            .row("server RSS after settle", mib(self.rss_after_settle))
            .row("server RSS after hold", mib(self.rss_after_hold))
            .row(
                "RSS per connection",
                self.rss_per_connection
                    .map_or("–".into(), |b| format!("{:.1} KiB", b as f64 / 1024.0)),
            )
            .usage(&self.usage_hold)
            .row("dropped", self.dropped)
            .errors_named("connect errors", &self.connect_errors)
            .errors_named("errors while held", &self.errors)
            .finish()
    }
}

/// Runs the scenario: connect everyone, settle, hold, read the server's
/// memory at each step, close.
pub async fn run(o: &Options) -> Result<IdleReport, ScenarioError> {
    if o.connections == 0 {
        return Err(ScenarioError::Invalid(
            "--connections must be at least 1".into(),
        ));
    }
    check_server_pid(&o.server_pids)?;
    check_file_limit(o.connections)?;
    let sources = plan_sources(o.connections, o.source_ips, &o.target)?;
    let rss = || {
        let each = o.server_pids.iter().map(|&p| Process::Pid(p).rss());
        each.sum::<Option<u64>>()
            .filter(|_| !o.server_pids.is_empty())
    };
    let rss_before = rss();

    let progress = Arc::new(Progress::default());
    let stop = CancellationToken::new();
    let ticker = o
        .progress
        .then(|| spawn_progress(progress.clone(), "connected", Instant::now(), stop.clone()));
    let dialer = Dialer {
        target: &o.target,
        auth: &o.auth,
        sources: &sources,
        concurrency: o.connect_concurrency,
    };
    let started = Instant::now();
    let (prefix, k) = (&o.channel_prefix, o.channels);
    let channel = |i: usize| if k == 0 { i } else { i % k };
    let opened = dialer
        .open(
            o.connections,
            |i| vec![format!("{prefix}.{}", channel(i))],
            &progress,
        )
        .await?;
    let connect_s = started.elapsed().as_secs_f64();
    let opened = opened
        .nonempty("connection")
        .inspect_err(|_| stop.cancel())?;
    let connected = opened.clients.len();
    let mut held = JoinSet::new();
    for (_, mut client) in opened.clients {
        let stop = stop.clone();
        held.spawn(async move {
            tokio::select! {
                _ = stop.cancelled() => {
                    let _ = tokio::time::timeout(Duration::from_secs(1), client.close()).await;
                    None
                }
                e = client.idle() => Some(e),
            }
        });
    }
    tokio::time::sleep(o.settle).await;
    let rss_after_settle = rss();
    let usage_hold = meter_until(&o.server_pids, Instant::now() + o.hold, &progress).await;
    let rss_after_hold = rss();
    stop.cancel();
    let (mut dropped, mut errors) = (0, ErrorCounts::default());
    while let Some(joined) = held.join_next().await {
        match joined {
            Ok(None) => {}
            Ok(Some(e)) => {
                dropped += 1;
                errors.add(e.kind(), || e.to_string());
            }
            Err(e) => {
                dropped += 1;
                errors.add("panic".into(), || e.to_string());
            }
        }
    }
    if let Some(t) = ticker {
        let _ = t.await;
    }
    let rss_per_connection = match (rss_before, rss_after_hold) {
        (Some(a), Some(b)) => Some(b.saturating_sub(a) / connected as u64),
        _ => None,
    };
    Ok(IdleReport {
        scenario: "idle",
        url: o.target.ws_url.clone(),
        protocol: o.target.protocol.name(),
        transport: o.target.transport,
        connections: o.connections,
        channels: o.channels,
        connected,
        connect_errors: opened.errors,
        connect_s,
        connect_latency: opened.latency.summary(),
        source_ips: sources.len(),
        rss_before,
        rss_after_settle,
        rss_after_hold,
        rss_per_connection,
        usage_hold,
        dropped,
        errors,
    })
}
