//! Scenarios, one module each, and what they share: run timing (warm-up
//! then a measured window), opening many connections with bounded
//! concurrency from spread source addresses, payload building and the
//! checks of the open-file limit and ephemeral ports.

pub mod api_publish;
pub mod chat;
pub mod connect_storm;
pub mod delivery;
pub mod durable_publish;
pub mod fanout;
pub mod idle;
pub mod many_channels;
pub mod publisher;

use std::future::Future;
use std::net::IpAddr;
use std::time::Duration;

use futures_util::StreamExt;
use tokio::time::Instant;

use crate::client::{Client, ClientError};
use crate::limits;
use crate::report::ErrorCounts;
use crate::stats::{Latency, Usage};
use crate::target::{Auth, Target, TargetError};

/// Longest a connection may take to open and complete its connect (and
/// subscribe) commands; slower ones count as failed.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Connections being opened at once; more would only queue in the
/// server's accept backlog.
pub const CONNECT_CONCURRENCY: usize = 64;
/// Longest a command may wait for its reply; a publisher that times out
/// stops, since a late reply would be taken for the next command's.
pub const REPLY_TIMEOUT: Duration = Duration::from_secs(10);
/// Longest the end of a run waits for in-flight deliveries.
pub const DRAIN_TIMEOUT: Duration = Duration::from_secs(5);

/// Why a scenario could not run.
#[derive(Debug, thiserror::Error)]
pub enum ScenarioError {
    #[error(transparent)]
    Target(#[from] TargetError),
    #[error("{0}")]
    FileLimit(String),
    #[error("no connection could be opened (first error: {0})")]
    NoConnections(ClientError),
    #[error("invalid option: {0}")]
    Invalid(String),
    #[error("{0}")]
    Ports(String),
}

/// Timing shared by a scenario's tasks.
#[derive(Debug, Clone, Copy)]
pub struct Window {
    /// When the measured window starts (after the warm-up).
    pub measure_from: Instant,
    /// When the measured window ends; no new operation starts after it.
    pub end: Instant,
}

impl Window {
    /// A window starting now: `warmup` then `duration`.
    pub fn starting_now(warmup: Duration, duration: Duration) -> Self {
        let measure_from = Instant::now() + warmup;
        Self {
            measure_from,
            end: measure_from + duration,
        }
    }

    /// Whether an operation started at `t` belongs to the measurement.
    pub fn measures(&self, t: Instant) -> bool {
        t >= self.measure_from && t < self.end
    }
}

/// Fails with advice when the open-file limit is below what `connections`
/// need; passes when the limit cannot be read.
pub fn check_file_limit(connections: usize) -> Result<(), ScenarioError> {
    match limits::open_files().and_then(|l| limits::advice(l, connections as u64)) {
        Some(advice) => Err(ScenarioError::FileLimit(advice)),
        None => Ok(()),
    }
}

/// Fails with advice when `connections` would run out of ephemeral ports;
/// otherwise returns the source addresses to bind round robin (none: let
/// the kernel choose).
pub fn plan_sources(
    connections: usize,
    requested: Option<usize>,
    target: &Target,
) -> Result<Vec<IpAddr>, ScenarioError> {
    limits::source_addresses(
        connections,
        requested,
        target.addr,
        limits::ephemeral_ports(),
    )
    .map_err(ScenarioError::Ports)
}

/// Runs `open(i)` for `i` in `0..n`, at most `concurrency` at once;
/// returns what opened (in no particular order) and the failures.
pub async fn open_many_with<T, F, Fut>(
    n: usize,
    concurrency: usize,
    open: F,
) -> (Vec<T>, ErrorCounts, Option<ClientError>)
where
    F: Fn(usize) -> Fut,
    Fut: Future<Output = Result<T, ClientError>>,
{
    let mut opened = Vec::with_capacity(n);
    let mut errors = ErrorCounts::default();
    let mut first = None;
    let mut results = futures_util::stream::iter(0..n)
        .map(open)
        .buffer_unordered(concurrency.max(1));
    while let Some(r) = results.next().await {
        match r {
            Ok(t) => opened.push(t),
            Err(e) => {
                errors.add(e.kind(), || e.to_string());
                first.get_or_insert(e);
            }
        }
    }
    (opened, errors, first)
}

/// The server API client that publishes: `publish_url` if given, else the
/// target's `/api/publish`.
pub fn publish_api(
    target: &Target,
    publish_url: &Option<String>,
    api_key: &Option<String>,
) -> Result<crate::api::Api, ScenarioError> {
    let url = publish_url
        .clone()
        .unwrap_or_else(|| target.api_url("publish"));
    crate::api::Api::new(url, api_key.clone(), REPLY_TIMEOUT)
        .map_err(|e| ScenarioError::Invalid(e.to_string()))
}

/// Connections that opened, each with its number.
#[derive(Default)]
pub struct Opened {
    pub clients: Vec<(usize, Client)>,
    pub errors: ErrorCounts,
    pub first_error: Option<ClientError>,
    /// Time from starting to open to the last subscribe reply, per client.
    pub latency: Latency,
}

impl Opened {
    /// The batch, or [`ScenarioError::NoConnections`] with the first error
    /// when not one connection opened (`what`: what they were for).
    pub fn nonempty(self, what: &str) -> Result<Opened, ScenarioError> {
        if self.clients.is_empty() {
            return Err(ScenarioError::NoConnections(
                self.first_error
                    .unwrap_or_else(|| ClientError::Lost(format!("no {what}"))),
            ));
        }
        Ok(self)
    }

    /// Adds another batch (opened against another node).
    pub fn merge(&mut self, other: Opened) {
        self.clients.extend(other.clients);
        self.errors.merge(other.errors);
        self.first_error = self.first_error.take().or(other.first_error);
        self.latency.merge(&other.latency);
    }
}

/// How to open a batch of subscribed connections.
pub struct Dialer<'a> {
    pub target: &'a Target,
    pub auth: &'a Auth,
    /// Source addresses, round robin (empty: the kernel chooses).
    pub sources: &'a [IpAddr],
    pub concurrency: usize,
}

impl Dialer<'_> {
    /// Opens `n` connections; connection `i` subscribes to `channels(i)` in
    /// order. Progress (opened so far) goes to `progress`.
    pub async fn open(
        &self,
        n: usize,
        channels: impl Fn(usize) -> Vec<String>,
        progress: &crate::stats::Progress,
    ) -> Result<Opened, ScenarioError> {
        let tokens = (0..n)
            .map(|i| self.auth.token(i))
            .collect::<Result<Vec<_>, _>>()?;
        let channels = &channels;
        let tokens = &tokens;
        let (opened, errors, first_error) = open_many_with(n, self.concurrency, |i| async move {
            let started = tokio::time::Instant::now();
            let source = (!self.sources.is_empty()).then(|| self.sources[i % self.sources.len()]);
            let r = async {
                let mut c =
                    Client::connect(self.target, &tokens[i], source, CONNECT_TIMEOUT).await?;
                for ch in channels(i) {
                    c.subscribe(&ch, CONNECT_TIMEOUT).await?;
                }
                Ok((i, c, started.elapsed()))
            }
            .await;
            match &r {
                Ok((_, _, took)) => progress.complete(*took),
                Err(_) => progress.error(),
            }
            r
        })
        .await;
        let mut latency = Latency::new();
        let clients = opened
            .into_iter()
            .map(|(i, c, took)| {
                latency.record(took);
                (i, c)
            })
            .collect();
        Ok(Opened {
            clients,
            errors,
            first_error,
            latency,
        })
    }
}

/// Measures [`Usage`] over `window` in the background.
pub fn meter_window(
    servers: Vec<u32>,
    window: Window,
    progress: std::sync::Arc<crate::stats::Progress>,
) -> tokio::task::JoinHandle<Usage> {
    tokio::spawn(async move {
        tokio::time::sleep_until(window.measure_from).await;
        meter_until(&servers, window.end, &progress).await
    })
}

/// Measures [`Usage`] from now until `end`.
pub async fn meter_until(
    servers: &[u32],
    end: Instant,
    progress: &crate::stats::Progress,
) -> Usage {
    let meter = Meter::start(servers, progress);
    tokio::time::sleep_until(end).await;
    meter.stop(progress)
}

/// CPU and completed operations from its start to its stop.
pub struct Meter {
    started: Instant,
    /// Each server process's (a cluster's nodes are added up).
    servers: Vec<crate::procfs::CpuMark>,
    me: crate::procfs::CpuMark,
    done: u64,
}

impl Meter {
    /// Starts measuring the server processes (`servers`: their PIDs) and
    /// this process.
    pub fn start(servers: &[u32], progress: &crate::stats::Progress) -> Self {
        use crate::procfs::{CpuMark, Process};
        Self {
            started: Instant::now(),
            servers: servers
                .iter()
                .map(|&pid| CpuMark::start(Process::Pid(pid)))
                .collect(),
            me: CpuMark::start(Process::Me),
            done: progress.done.load(std::sync::atomic::Ordering::Relaxed),
        }
    }

    /// What was used since the start.
    pub fn stop(self, progress: &crate::stats::Progress) -> Usage {
        let server_use = crate::procfs::CpuUse::sum(self.servers.iter().map(|m| m.since()));
        Usage {
            seconds: self.started.elapsed().as_secs_f64(),
            operations: progress.done.load(std::sync::atomic::Ordering::Relaxed) - self.done,
            server_cpu_s: server_use.map(|u| u.seconds),
            server_system_s: server_use.map(|u| u.system_seconds),
            server_cpu_percent: server_use.map(|u| u.share * 100.0),
            loadgen_cpu_percent: self.me.since().map_or(0.0, |u| u.share * 100.0),
        }
    }
}

/// Checks that each `--server-pid` names a readable process.
pub fn check_server_pid(pids: &[u32]) -> Result<(), ScenarioError> {
    match pids
        .iter()
        .find(|&&p| crate::procfs::Process::Pid(p).cpu().is_none())
    {
        Some(p) => Err(ScenarioError::Invalid(format!(
            "--server-pid {p}: no such process readable in /proc"
        ))),
        _ => Ok(()),
    }
}

/// A well-mixed 64-bit hash (splitmix64), so publication `n` picks its
/// channel (or a chat its member) reproducibly without a random number generator.
pub(crate) fn mix(n: u64) -> u64 {
    let mut z = n.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// A JSON object `{<fields>,"pad":"xxx…"}` padded to `size` bytes (or the
/// smallest it can be when `size` is smaller). `fields` is either empty or
/// JSON members without braces, e.g. `"seq":1`.
pub fn padded_object(fields: &str, size: usize) -> String {
    let sep = if fields.is_empty() { "" } else { "," };
    let bare = format!("{{{fields}{sep}\"pad\":\"\"}}");
    let pad = size.saturating_sub(bare.len());
    format!("{{{fields}{sep}\"pad\":\"{}\"}}", "x".repeat(pad))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn padded_objects_have_the_requested_size() {
        for size in [0, 10, 11, 200, 4096] {
            let p = padded_object("", size);
            assert_eq!(p.len(), size.max(10), "{p}");
            serde_json::from_str::<serde_json::Value>(&p).unwrap();
            let p = padded_object("\"seq\":12", size);
            assert_eq!(p.len(), size.max(19), "{p}");
            assert_eq!(
                serde_json::from_str::<serde_json::Value>(&p).unwrap()["seq"],
                12
            );
        }
    }
}
