//! The publishing side of `fanout` and `many-channels`: publications
//! through an HTTP publish endpoint at a fixed total rate, spread over a
//! few concurrent publishers (each sends one request at a time, so a slow
//! reply does not hold the others back). Every publication's data opens
//! with a [`Stamp`]: publisher, its own sequence number, send time.

use std::sync::atomic::Ordering;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde_json::value::RawValue;
use tokio::time::Instant;

use super::{padded_object, ScenarioError, Window};
use crate::api::Api;
use crate::protocol::Stamp;
use crate::report::ErrorCounts;
use crate::stats::Progress;
use crate::target::check_http_url;

/// Most concurrent publishers.
pub const MAX_PUBLISHERS: usize = 64;

/// Highest publish rate accepted (publications per second).
pub const MAX_RATE: f64 = 100_000.0;

/// Checks the publishing flags every publishing scenario shares.
pub fn check(rate: f64, publishers: usize, publish_url: Option<&str>) -> Result<(), ScenarioError> {
    if !(rate > 0.0 && rate <= MAX_RATE) {
        return Err(ScenarioError::Invalid(format!(
            "--rate must be in (0, {MAX_RATE}]"
        )));
    }
    if !(1..=MAX_PUBLISHERS).contains(&publishers) {
        return Err(ScenarioError::Invalid(format!(
            "--publishers must be 1 to {MAX_PUBLISHERS}"
        )));
    }
    match publish_url {
        Some(url) => Ok(check_http_url(url)?),
        None => Ok(()),
    }
}

/// The run's shared clock. Stamps are microseconds since the Unix epoch,
/// read as this process's monotonic clock from where the two stood when
/// the run began, so that several load-generator processes on one host
/// (each holding its share of the connections) read each other's stamps.
#[derive(Clone, Copy)]
pub struct Clock {
    origin: Instant,
    /// The Unix time of `origin`, in microseconds.
    origin_unix_us: u64,
    /// When the load starts (the warm-up first).
    pub start: Instant,
    pub window: Window,
}

impl Clock {
    pub fn starting_now(warmup: Duration, duration: Duration) -> Self {
        Self::starting_at(None, warmup, duration).expect("now has not passed")
    }

    /// A run whose load starts at Unix time `at` (now when `None`): several
    /// processes given the same time measure the same window. Fails when
    /// `at` has passed.
    pub fn starting_at(
        at: Option<SystemTime>,
        warmup: Duration,
        duration: Duration,
    ) -> Result<Self, ScenarioError> {
        let (origin, unix_now) = (Instant::now(), SystemTime::now());
        let origin_unix_us = micros(unix_now.duration_since(UNIX_EPOCH).unwrap_or_default());
        let wait = match at {
            None => Duration::ZERO,
            Some(at) => at.duration_since(unix_now).map_err(|late| {
                ScenarioError::Invalid(format!(
                    "--start-at passed {:?} before this process was ready",
                    late.duration()
                ))
            })?,
        };
        let start = origin + wait;
        let measure_from = start + warmup;
        Ok(Self {
            origin,
            origin_unix_us,
            start,
            window: Window {
                measure_from,
                end: measure_from + duration,
            },
        })
    }

    pub fn now_us(&self) -> u64 {
        self.origin_unix_us + micros(self.origin.elapsed())
    }

    /// Whether a publication stamped `ts_us` was sent in the measured window.
    pub fn measures_stamp(&self, ts_us: u64) -> bool {
        let since = Duration::from_micros(ts_us.saturating_sub(self.origin_unix_us));
        ts_us >= self.origin_unix_us && self.window.measures(self.origin + since)
    }
}

fn micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX)
}

/// What to publish.
pub struct Plan<'a, F> {
    pub api: &'a Api,
    /// Publications per second, all publishers together.
    pub rate: f64,
    pub publishers: usize,
    /// Size in bytes of each publication's data.
    pub payload: usize,
    /// For publication number `n` (over all publishers): the channel and
    /// how many deliveries it should make.
    pub pick: F,
}

/// What the publishers did.
#[derive(Debug, Default)]
pub struct Published {
    /// Publications the endpoint acknowledged.
    pub acked: u64,
    /// Acknowledged publications sent in the measured window.
    pub measured: u64,
    /// Deliveries the acknowledged publications should make.
    pub expected: u64,
    pub errors: ErrorCounts,
}

/// Publishes on schedule (publication `n` is due `n / rate` after the
/// start, publisher `n mod publishers` sends it) until the window ends.
/// Behind schedule, a publisher sends as fast as replies come and does not
/// catch up after the end: the achieved rate is the figure to read then.
pub async fn run<F>(plan: &Plan<'_, F>, clock: Clock, progress: &Progress) -> Published
where
    F: Fn(u64) -> (String, u64),
{
    tokio::time::sleep_until(clock.start).await;
    let start = clock.start;
    let k = plan.publishers;
    let interval = Duration::from_secs_f64(1.0 / plan.rate);
    let tasks = (0..k).map(|p| async move {
        let mut out = Published::default();
        for seq in 0u64.. {
            let n = seq * k as u64 + p as u64;
            let due = start + interval.mul_f64(n as f64);
            if due >= clock.window.end || Instant::now() >= clock.window.end {
                break;
            }
            tokio::time::sleep_until(due).await;
            let (channel, deliveries) = (plan.pick)(n);
            let stamp = Stamp {
                publisher: p as u32,
                seq,
                ts_us: clock.now_us(),
            };
            let data = RawValue::from_string(padded_object(&stamp.members(), plan.payload))
                .expect("padded object is JSON");
            progress.sent.fetch_add(1, Ordering::Relaxed);
            match plan.api.publish(&channel, &data).await {
                Ok(()) => {
                    out.acked += 1;
                    out.expected += deliveries;
                    out.measured += u64::from(clock.measures_stamp(stamp.ts_us));
                }
                Err(e) => {
                    progress.error();
                    out.errors.add(e.kind(), || e.to_string());
                }
            }
        }
        out
    });
    let mut total = Published::default();
    for one in futures_util::future::join_all(tasks).await {
        total.acked += one.acked;
        total.measured += one.measured;
        total.expected += one.expected;
        total.errors.merge(one.errors);
    }
    total
}
