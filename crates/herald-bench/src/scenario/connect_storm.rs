//! `connect-storm`: N clients open a WebSocket, connect and subscribe to
//! their own channel, with a bounded number in flight: connects per second,
//! connect latency, failures and (with `--server-pid`) the server's CPU per
//! connection. Every connection stays open until all have been tried.

use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::{check_file_limit, check_server_pid, plan_sources, Dialer, Meter, ScenarioError};
use crate::report::{ErrorCounts, Report, Table};
use crate::stats::{spawn_progress, Progress, Summary};
use crate::target::{Auth, Target};

/// What to run.
#[derive(Debug, Clone)]
pub struct Options {
    pub target: Target,
    pub auth: Auth,
    pub clients: usize,
    /// Connections being opened at once.
    pub concurrency: usize,
    /// Client i subscribes to `<prefix>.<i>`.
    pub channel_prefix: String,
    pub server_pid: Option<u32>,
    pub source_ips: Option<usize>,
    pub progress: bool,
}

/// Every figure of a run.
#[derive(Debug, Serialize)]
pub struct ConnectStormReport {
    pub scenario: &'static str,
    pub url: String,
    pub protocol: &'static str,
    pub clients: usize,
    pub concurrency: usize,
    pub connected: usize,
    pub failed: u64,
    pub errors: ErrorCounts,
    pub elapsed_s: f64,
    /// Connected clients per second of the storm.
    pub connects_per_s: f64,
    /// Open + connect + subscribe, per client.
    pub latency: Summary,
    pub server_cpu_s: Option<f64>,
    pub server_cpu_percent: Option<f64>,
    /// Server CPU-milliseconds per connected client.
    pub server_cpu_ms_per_connect: Option<f64>,
    pub loadgen_cpu_percent: f64,
}

impl Report for ConnectStormReport {
    fn clean(&self) -> bool {
        self.connected == self.clients
    }
    fn nothing_done(&self) -> Option<&'static str> {
        (self.connected == 0).then_some("no client connected")
    }
    fn table(&self) -> String {
        let mut t = Table::new("herald-bench connect-storm");
        t.row("url", format_args!("{} ({})", self.url, self.protocol))
            .row(
                "connected",
                format_args!(
                    "{} / {} ({} in flight)",
                    self.connected, self.clients, self.concurrency
                ),
            )
            .row("elapsed", format_args!("{:.2} s", self.elapsed_s))
            .row("connects/s", format_args!("{:.0}", self.connects_per_s))
            .latency("connect + subscribe", &self.latency);
        let per = format!(
            "{:.3} ms per connect",
            self.server_cpu_ms_per_connect.unwrap_or(0.0)
        );
        t.cpu(
            self.server_cpu_s,
            self.server_cpu_percent,
            per,
            self.loadgen_cpu_percent,
        )
        .errors(&self.errors)
        .finish()
    }
}

/// Runs the storm, then closes every connection.
pub async fn run(o: &Options) -> Result<ConnectStormReport, ScenarioError> {
    if o.clients == 0 || o.concurrency == 0 {
        return Err(ScenarioError::Invalid(
            "--clients and --concurrency must be at least 1".into(),
        ));
    }
    check_server_pid(o.server_pid.as_slice())?;
    check_file_limit(o.clients)?;
    let sources = plan_sources(o.clients, o.source_ips, &o.target)?;
    let progress = Arc::new(Progress::default());
    let stop = CancellationToken::new();
    let started = Instant::now();
    let ticker = o
        .progress
        .then(|| spawn_progress(progress.clone(), "connected", started, stop.clone()));
    let meter = Meter::start(o.server_pid.as_slice(), &progress);
    let dialer = Dialer {
        target: &o.target,
        auth: &o.auth,
        sources: &sources,
        concurrency: o.concurrency,
    };
    let prefix = &o.channel_prefix;
    let opened = dialer
        .open(o.clients, |i| vec![format!("{prefix}.{i}")], &progress)
        .await?;
    let usage = meter.stop(&progress);
    let elapsed_s = started.elapsed().as_secs_f64();
    stop.cancel();
    if let Some(t) = ticker {
        let _ = t.await;
    }
    let connected = opened.clients.len();
    // Close in bulk, bounded: the figures are taken already.
    let closing = opened.clients.into_iter().map(|(_, c)| c.close());
    let _ = tokio::time::timeout(
        Duration::from_secs(10),
        futures_util::future::join_all(closing),
    )
    .await;
    Ok(ConnectStormReport {
        scenario: "connect-storm",
        url: o.target.ws_url.clone(),
        protocol: o.target.protocol.name(),
        clients: o.clients,
        concurrency: o.concurrency,
        connected,
        failed: opened.errors.total,
        errors: opened.errors,
        elapsed_s,
        connects_per_s: connected as f64 / elapsed_s.max(1e-9),
        latency: opened.latency.summary(),
        server_cpu_s: usage.server_cpu_s,
        server_cpu_percent: usage.server_cpu_percent,
        server_cpu_ms_per_connect: usage
            .server_cpu_s
            .filter(|_| connected > 0)
            .map(|s| s * 1000.0 / connected as f64),
        loadgen_cpu_percent: usage.loadgen_cpu_percent,
    })
}
