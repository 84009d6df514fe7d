//! What `/metrics` shows (with `prometheus.enabled`), through the
//! `prometheus-client` crate: every family with `# HELP` and `# TYPE`, in
//! the OpenMetrics text format Prometheus reads.
//!
//! Two kinds of figures: histograms and labelled counters kept as things
//! happen ([`Metrics`], shared by the node), and values read when scraped —
//! the hub's gauges, the node's plain counters ([`Counters`]), the process's
//! memory, CPU and descriptors — handed to [`Metrics::render`] as
//! [`Sample`]s.

mod samples;

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

use crate::store::CommitMetrics;
use samples::Samples;
pub use samples::{samples, Kind, Sample};

/// Counters kept as things happen.
#[derive(Debug, Default)]
pub struct Counters {
    pub publications: AtomicU64,
    pub slow_disconnects: AtomicU64,
    pub connections_accepted: AtomicU64,
    pub api_requests: AtomicU64,
    /// Connections refused by `client.connection_rate_limit` or its per-IP
    /// limit.
    pub connections_refused_by_rate: AtomicU64,
    /// Commands refused by `client.command_rate_limit` (error 111).
    pub commands_refused_by_rate: AtomicU64,
    /// Calls to the application's backend through a proxy, and those that
    /// failed (not reached, a bad status, no answer in time, garbage).
    pub proxy_calls: AtomicU64,
    pub proxy_errors: AtomicU64,
    /// Webhook events recorded, delivered, attempts that failed (and will
    /// be tried again), events kept as dead letters.
    pub webhook_events: AtomicU64,
    pub webhook_delivered: AtomicU64,
    pub webhook_failed_attempts: AtomicU64,
    pub webhook_dead_letters: AtomicU64,
    /// WebSocket messages (each may join several frames) and their bytes,
    /// written to clients and read from them.
    pub messages_out: AtomicU64,
    pub bytes_out: AtomicU64,
    pub messages_in: AtomicU64,
    pub bytes_in: AtomicU64,
    /// Connections told to reconnect elsewhere (3001) as the node shut down.
    pub shutdown_closes: AtomicU64,
}

impl Counters {
    pub fn incr(c: &AtomicU64) {
        c.fetch_add(1, Ordering::Relaxed);
    }

    pub fn add(c: &AtomicU64, n: u64) {
        c.fetch_add(n, Ordering::Relaxed);
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct MethodLabel {
    pub method: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ApiLabels {
    pub method: &'static str,
    /// `http` or `grpc`.
    pub protocol: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ErrorLabels {
    pub method: &'static str,
    pub code: u32,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RecoveredLabel {
    /// `yes` or `no`.
    pub recovered: &'static str,
}

fn duration_histogram() -> Histogram {
    // 50 µs to ~13 s, ×4 each.
    Histogram::new(prometheus_client::metrics::histogram::exponential_buckets(
        0.000_05, 4.0, 10,
    ))
}

/// Figures kept as things happen, by label.
#[derive(Debug)]
pub struct Metrics {
    /// Client commands, by method, from decode to reply.
    pub command_duration: Family<MethodLabel, Histogram>,
    /// Error replies to client commands, by method and code.
    pub reply_errors: Family<ErrorLabels, Counter>,
    /// Server API calls, by method and protocol.
    pub api_duration: Family<ApiLabels, Histogram>,
    /// Subscriptions that asked to recover, by whether they did.
    pub recoveries: Family<RecoveredLabel, Counter>,
    /// Publications without a stream handed to the broker.
    pub broker_publish: Histogram,
    /// From a ping to the client's pong.
    pub ping_pong: Histogram,
}

impl Default for Metrics {
    fn default() -> Self {
        Self {
            command_duration: Family::new_with_constructor(duration_histogram),
            reply_errors: Family::default(),
            api_duration: Family::new_with_constructor(duration_histogram),
            recoveries: Family::default(),
            broker_publish: duration_histogram(),
            ping_pong: duration_histogram(),
        }
    }
}

impl Metrics {
    pub fn command(&self, method: &'static str, took: Duration) {
        self.command_duration
            .get_or_create(&MethodLabel { method })
            .observe(took.as_secs_f64());
    }

    pub fn reply_error(&self, method: &'static str, code: u32) {
        self.reply_errors
            .get_or_create(&ErrorLabels { method, code })
            .inc();
    }

    pub fn api_call(&self, method: &'static str, protocol: &'static str, took: Duration) {
        self.api_duration
            .get_or_create(&ApiLabels { method, protocol })
            .observe(took.as_secs_f64());
    }

    pub fn recovery(&self, recovered: bool) {
        let recovered = if recovered { "yes" } else { "no" };
        self.recoveries
            .get_or_create(&RecoveredLabel { recovered })
            .inc();
    }

    pub fn broker_publish(&self, took: Duration) {
        self.broker_publish.observe(took.as_secs_f64());
    }

    pub fn ping_pong(&self, took: Duration) {
        self.ping_pong.observe(took.as_secs_f64());
    }

    /// The exposition: these families, durable storage's commits (when it
    /// is open) and `samples`, then `# EOF`.
    pub fn render(&self, samples: Vec<Sample>, commits: Option<&CommitMetrics>) -> String {
        let mut registry = Registry::default();
        registry.register(
            "herald_client_command_duration_seconds",
            "Time from a client command's arrival to its reply, by method.",
            self.command_duration.clone(),
        );
        registry.register(
            "herald_client_reply_errors",
            "Error replies to client commands, by method and error code.",
            self.reply_errors.clone(),
        );
        registry.register(
            "herald_api_request_duration_seconds",
            "Time to answer a server API call, by method and protocol (http, grpc).",
            self.api_duration.clone(),
        );
        registry.register(
            "herald_client_recoveries",
            "Subscriptions that asked to recover missed publications, by whether all were recovered.",
            self.recoveries.clone(),
        );
        registry.register(
            "herald_broker_publish_duration_seconds",
            "Time for the broker to take a publication without a stream (in memory, Redis or NATS).",
            self.broker_publish.clone(),
        );
        registry.register(
            "herald_client_ping_pong_duration_seconds",
            "Time from a ping to the client's pong.",
            self.ping_pong.clone(),
        );
        if let Some(c) = commits {
            registry.register(
                "herald_durable_commit_duration_seconds",
                "Time of one durable commit (a batch of publications in one transaction).",
                c.seconds.clone(),
            );
            registry.register(
                "herald_durable_commit_publications",
                "Publications in one durable commit.",
                c.publications.clone(),
            );
        }
        registry.register_collector(Box::new(Samples(samples)));
        let mut out = String::with_capacity(8 * 1024);
        // Writing to a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &registry);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hub::Hub;

    #[test]
    fn every_family_has_help_and_type() {
        let m = Metrics::default();
        m.command("publish", Duration::from_millis(2));
        m.reply_error("subscribe", 103);
        m.api_call("publish", "http", Duration::from_millis(1));
        m.recovery(true);
        let text = m.render(samples(&Counters::default(), &Hub::new(), 3, 0), None);
        for family in [
            "herald_client_command_duration_seconds",
            "herald_client_reply_errors",
            "herald_api_request_duration_seconds",
            "herald_client_recoveries",
            "herald_connections",
            "herald_publications",
            "herald_build_info",
            "process_resident_memory_bytes",
            "process_cpu_seconds",
            "process_open_fds",
        ] {
            assert!(
                text.contains(&format!("# HELP {family} ")),
                "{family}:\n{text}"
            );
            assert!(
                text.contains(&format!("# TYPE {family} ")),
                "{family}:\n{text}"
            );
        }
        assert!(text.contains("herald_retention_removed_total 3"), "{text}");
        assert!(
            text.contains(r#"herald_client_reply_errors_total{method="subscribe",code="103"} 1"#),
            "{text}"
        );
        assert!(text.contains(r#"herald_build_info{version=""#), "{text}");
        assert!(
            text.contains(
                r#"herald_client_command_duration_seconds_bucket{le="+Inf",method="publish"} 1"#
            ) || text.contains(
                r#"herald_client_command_duration_seconds_bucket{method="publish",le="+Inf"} 1"#
            ),
            "{text}"
        );
        assert!(text.trim_end().ends_with("# EOF"));
    }
}
