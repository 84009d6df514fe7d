//! Scenarios, one module each, and what they share: run timing (warm-up
//! then a measured window), opening many connections with bounded
//! concurrency, payload building and the open-file check.

pub mod durable_publish;
pub mod fanout;

use std::future::Future;
use std::time::Duration;

use futures_util::StreamExt;
use tokio::time::Instant;

use crate::client::ClientError;
use crate::limits;
use crate::report::ErrorCounts;
use crate::target::TargetError;

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

/// Runs `open(i)` for `i` in `0..n`, at most [`CONNECT_CONCURRENCY`] at
/// once; returns what opened (in no particular order) and the failures.
pub async fn open_many<T, F, Fut>(n: usize, open: F) -> (Vec<T>, ErrorCounts, Option<ClientError>)
where
    F: Fn(usize) -> Fut,
    Fut: Future<Output = Result<T, ClientError>>,
{
    let mut opened = Vec::with_capacity(n);
    let mut errors = ErrorCounts::default();
    let mut first = None;
    let mut results = futures_util::stream::iter(0..n)
        .map(open)
        .buffer_unordered(CONNECT_CONCURRENCY);
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
