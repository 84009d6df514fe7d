//! Measurements: latency histograms (microseconds, hdrhistogram) merged
//! from per-task copies, their summaries, and the shared counters behind
//! the once-a-second progress line on stderr.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use hdrhistogram::Histogram;
use serde::Serialize;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// Largest latency the histograms hold; longer samples are clamped to it.
pub const MAX_LATENCY: Duration = Duration::from_secs(60);

/// Latency samples in microseconds, 3 significant digits.
#[derive(Clone)]
pub struct Latency {
    hist: Histogram<u64>,
}

impl Default for Latency {
    fn default() -> Self {
        Self::new()
    }
}

impl Latency {
    pub fn new() -> Self {
        let max = MAX_LATENCY.as_micros() as u64;
        let hist = Histogram::new_with_bounds(1, max, 3).expect("valid histogram bounds");
        Self { hist }
    }

    pub fn record(&mut self, d: Duration) {
        self.record_us(d.as_micros().try_into().unwrap_or(u64::MAX));
    }

    pub fn record_us(&mut self, us: u64) {
        self.hist.saturating_record(us.max(1));
    }

    pub fn merge(&mut self, other: &Latency) {
        // Same bounds on both sides, so adding cannot fail.
        let _ = self.hist.add(&other.hist);
    }

    pub fn count(&self) -> u64 {
        self.hist.len()
    }

    pub fn summary(&self) -> Summary {
        let h = &self.hist;
        let empty = h.is_empty();
        let q = |q: f64| if empty { 0 } else { h.value_at_quantile(q) };
        Summary {
            count: h.len(),
            mean_us: if empty { 0.0 } else { h.mean() },
            p50_us: q(0.50),
            p90_us: q(0.90),
            p99_us: q(0.99),
            p999_us: q(0.999),
            max_us: if empty { 0 } else { h.max() },
        }
    }
}

/// Latency samples as they come, in microseconds, for tasks too many to
/// each hold a [`Latency`] (a histogram up to [`MAX_LATENCY`] is ~140 KiB:
/// thousands of them cost gigabytes and seconds to set up); added into one
/// histogram at the end. Four bytes a sample.
#[derive(Debug, Default, Clone)]
pub struct Samples(Vec<u32>);

impl Samples {
    pub fn record(&mut self, d: Duration) {
        self.record_us(d.as_micros().try_into().unwrap_or(u64::MAX));
    }

    pub fn record_us(&mut self, us: u64) {
        self.0.push(u32::try_from(us).unwrap_or(u32::MAX));
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Records every sample into `latency`.
    pub fn add_to(&self, latency: &mut Latency) {
        for us in &self.0 {
            latency.record_us(u64::from(*us));
        }
    }
}

/// Percentiles of a [`Latency`], in microseconds.
#[derive(Debug, Clone, Serialize)]
pub struct Summary {
    pub count: u64,
    pub mean_us: f64,
    pub p50_us: u64,
    pub p90_us: u64,
    pub p99_us: u64,
    pub p999_us: u64,
    pub max_us: u64,
}

/// CPU of the server and of the load generator over the measured window,
/// and the operations completed in it.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct Usage {
    /// Wall-clock seconds measured.
    pub seconds: f64,
    /// Operations completed in the window (deliveries received).
    pub operations: u64,
    /// Server CPU-seconds (user + system), with `--server-pid`.
    pub server_cpu_s: Option<f64>,
    /// Of those, the seconds spent in the kernel on the server's behalf
    /// (on loopback that includes much of both ends' TCP work).
    pub server_system_s: Option<f64>,
    /// Server CPU as a share of one core, in percent.
    pub server_cpu_percent: Option<f64>,
    /// This process's CPU as a share of one core, in percent: near 100
    /// (or the number of cores it may use) means the load generator, not
    /// the server, set the pace.
    pub loadgen_cpu_percent: f64,
}

impl Usage {
    /// Server CPU-seconds per million operations.
    pub fn server_cpu_s_per_million(&self) -> Option<f64> {
        self.per_million(self.server_cpu_s?)
    }

    /// Of [`Usage::server_cpu_s_per_million`], the kernel's seconds.
    pub fn server_system_s_per_million(&self) -> Option<f64> {
        self.per_million(self.server_system_s?)
    }

    fn per_million(&self, seconds: f64) -> Option<f64> {
        (self.operations > 0).then(|| seconds * 1e6 / self.operations as f64)
    }
}

/// A tick this close after the end of the warm-up still reports it (the
/// ticker and the warm-up start together, so they end together).
const PHASE_SLACK: Duration = Duration::from_millis(100);

/// Counters shared by a scenario's tasks, read by the progress line.
#[derive(Default)]
pub struct Progress {
    /// Publications sent (only shown when a scenario counts them).
    pub sent: AtomicU64,
    /// Operations completed: publications acknowledged or delivered.
    pub done: AtomicU64,
    pub errors: AtomicU64,
    latency_sum_us: AtomicU64,
    latency_n: AtomicU64,
}

impl Progress {
    /// Counts one completed operation and its latency.
    pub fn complete(&self, latency: Duration) {
        self.done.fetch_add(1, Ordering::Relaxed);
        let us = latency.as_micros().try_into().unwrap_or(u64::MAX);
        self.latency_sum_us.fetch_add(us, Ordering::Relaxed);
        self.latency_n.fetch_add(1, Ordering::Relaxed);
    }

    pub fn error(&self) {
        self.errors.fetch_add(1, Ordering::Relaxed);
    }

    fn snapshot(&self) -> [u64; 5] {
        [
            self.sent.load(Ordering::Relaxed),
            self.done.load(Ordering::Relaxed),
            self.errors.load(Ordering::Relaxed),
            self.latency_sum_us.load(Ordering::Relaxed),
            self.latency_n.load(Ordering::Relaxed),
        ]
    }
}

/// Prints one line a second to stderr until `stop` is cancelled: the rates
/// of the last second and its mean latency. `done_label` names what `done`
/// counts ("acked", "delivered").
pub fn spawn_progress(
    progress: Arc<Progress>,
    done_label: &'static str,
    measure_from: Instant,
    stop: CancellationToken,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let start = Instant::now();
        let mut tick =
            tokio::time::interval_at(start + Duration::from_secs(1), Duration::from_secs(1));
        let mut last = progress.snapshot();
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tick.tick() => {}
            }
            let now = progress.snapshot();
            let d: Vec<u64> = now.iter().zip(&last).map(|(a, b)| a - b).collect();
            last = now;
            // The line describes the second that just ended.
            let phase = if Instant::now() <= measure_from + PHASE_SLACK {
                "warmup"
            } else {
                "measure"
            };
            let mean_ms = if d[4] == 0 {
                0.0
            } else {
                d[3] as f64 / d[4] as f64 / 1000.0
            };
            let sent = if now[0] > 0 {
                format!("sent {}/s  ", d[0])
            } else {
                String::new()
            };
            eprintln!(
                "[{:>4}s {phase:<7}] {sent}{done_label} {}/s  mean {mean_ms:.2} ms  errors {} (total {})",
                start.elapsed().as_secs(),
                d[1],
                d[2],
                now[2],
            );
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn summary_of_known_samples() {
        let mut a = Latency::new();
        for us in 1..=1000 {
            a.record_us(us);
        }
        let mut b = Latency::new();
        b.record(Duration::from_secs(3600));
        a.merge(&b);
        let s = a.summary();
        assert_eq!(s.count, 1001);
        assert!((499..=501).contains(&s.p50_us), "{s:?}");
        assert!((989..=991).contains(&s.p99_us), "{s:?}");
        // Clamped to the histogram's top.
        assert!(s.max_us >= 59_000_000, "{s:?}");
        assert_eq!(Latency::new().summary().p99_us, 0);
    }

    #[test]
    fn samples_add_up_into_a_histogram() {
        let mut s = Samples::default();
        assert!(s.is_empty());
        for us in 1..=1000 {
            s.record_us(us);
        }
        s.record(Duration::from_secs(3600 * 24 * 365)); // beyond u32 µs: kept as the most
        assert_eq!(s.len(), 1001);
        let mut l = Latency::new();
        l.record_us(5);
        s.add_to(&mut l);
        let summary = l.summary();
        assert_eq!(summary.count, 1002);
        assert!((499..=501).contains(&summary.p50_us), "{summary:?}");
        assert!(summary.max_us >= 59_000_000, "{summary:?}");
    }
}
