//! What `/metrics` shows (with `prometheus.enabled`), through the
//! `prometheus-client` crate: every family with `# HELP` and `# TYPE`, in
//! the OpenMetrics text format Prometheus reads.
//!
//! Two kinds of figures: histograms and labelled counters kept as things
//! happen ([`Metrics`], shared by the node), and values read when scraped —
//! the hub's gauges, the node's plain counters ([`Counters`]), the process's
//! memory, CPU and descriptors — handed to [`Metrics::render`] as
//! [`Sample`]s.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric};
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

use crate::hub::Hub;
use crate::store::CommitMetrics;

/// Counters kept as things happen.
#[derive(Debug, Default)]
pub struct Counters {
    pub publications: AtomicU64,
    pub slow_disconnects: AtomicU64,
    pub connections_accepted: AtomicU64,
    pub commands: AtomicU64,
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

/// A value read when scraped.
#[derive(Debug, Clone)]
pub struct Sample {
    /// Without `_total` (counters get it when written).
    pub name: &'static str,
    pub help: &'static str,
    pub kind: Kind,
    pub value: f64,
    /// One label, for info-style gauges.
    pub label: Option<(&'static str, String)>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Gauge,
    Counter,
}

impl Sample {
    pub fn gauge(name: &'static str, help: &'static str, value: f64) -> Self {
        Self {
            name,
            help,
            kind: Kind::Gauge,
            value,
            label: None,
        }
    }

    pub fn counter(name: &'static str, help: &'static str, value: u64) -> Self {
        Self {
            name,
            help,
            kind: Kind::Counter,
            value: value as f64,
            label: None,
        }
    }
}

#[derive(Debug)]
struct Samples(Vec<Sample>);

impl Collector for Samples {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        for s in &self.0 {
            // Whole numbers are written as integers.
            let whole = s.value.fract() == 0.0 && s.value.abs() < 9.0e15;
            match s.kind {
                Kind::Gauge if whole => gauge(&mut encoder, s, ConstGauge::new(s.value as i64))?,
                Kind::Gauge => gauge(&mut encoder, s, ConstGauge::new(s.value))?,
                Kind::Counter if whole => {
                    counter(&mut encoder, s, ConstCounter::new(s.value as u64))?
                }
                Kind::Counter => counter(&mut encoder, s, ConstCounter::new(s.value))?,
            }
        }
        Ok(())
    }
}

fn gauge(
    encoder: &mut DescriptorEncoder,
    s: &Sample,
    gauge: impl EncodeMetric,
) -> Result<(), std::fmt::Error> {
    let mut metric = encoder.encode_descriptor(s.name, s.help, None, gauge.metric_type())?;
    match &s.label {
        Some((key, value)) => {
            let labels = [(*key, value.as_str())];
            gauge.encode(metric.encode_family(&labels)?)
        }
        None => gauge.encode(metric),
    }
}

fn counter(
    encoder: &mut DescriptorEncoder,
    s: &Sample,
    counter: impl EncodeMetric,
) -> Result<(), std::fmt::Error> {
    let metric = encoder.encode_descriptor(s.name, s.help, None, counter.metric_type())?;
    counter.encode(metric)
}

/// The node's values as scraped now.
pub fn samples(
    c: &Counters,
    h: &Hub,
    retention_removed: u64,
    broker_reconnects: u64,
) -> Vec<Sample> {
    let (gaps_filled, resyncs) = h.gap_counts();
    let load = |v: &AtomicU64| v.load(Ordering::Relaxed);
    let mut out = vec![
        Sample::gauge(
            "herald_connections",
            "Client connections on this node.",
            h.num_clients() as f64,
        ),
        Sample::gauge(
            "herald_users",
            "Distinct users connected to this node.",
            h.num_users() as f64,
        ),
        Sample::gauge(
            "herald_channels",
            "Channels with subscribers on this node.",
            h.num_channels() as f64,
        ),
        Sample::gauge(
            "herald_subscriptions",
            "Subscriptions on this node.",
            h.num_subscriptions() as f64,
        ),
        Sample::counter(
            "herald_connections_accepted",
            "Connections accepted since start.",
            load(&c.connections_accepted),
        ),
        Sample::counter(
            "herald_publications",
            "Publications made on this node.",
            load(&c.publications),
        ),
        Sample::counter(
            "herald_slow_disconnects",
            "Connections closed because they did not read what they were sent (3008).",
            load(&c.slow_disconnects),
        ),
        Sample::counter(
            "herald_commands",
            "Client commands received.",
            load(&c.commands),
        ),
        Sample::counter(
            "herald_transport_messages_sent",
            "WebSocket messages written to clients (each may carry several frames).",
            load(&c.messages_out),
        ),
        Sample::counter(
            "herald_transport_bytes_sent",
            "Bytes of WebSocket messages written to clients.",
            load(&c.bytes_out),
        ),
        Sample::counter(
            "herald_transport_messages_received",
            "WebSocket messages read from clients.",
            load(&c.messages_in),
        ),
        Sample::counter(
            "herald_transport_bytes_received",
            "Bytes of WebSocket messages read from clients.",
            load(&c.bytes_in),
        ),
        Sample::counter(
            "herald_api_requests",
            "Server API requests.",
            load(&c.api_requests),
        ),
        Sample::counter(
            "herald_retention_removed",
            "Durable publications removed by retention.",
            retention_removed,
        ),
        Sample::counter(
            "herald_connections_rate_limited",
            "New connections refused by a connection rate limit.",
            load(&c.connections_refused_by_rate),
        ),
        Sample::counter(
            "herald_commands_rate_limited",
            "Client commands refused by a command rate limit (111).",
            load(&c.commands_refused_by_rate),
        ),
        Sample::counter(
            "herald_stream_gaps_filled",
            "Gaps in a channel's delivery filled from its stream.",
            gaps_filled,
        ),
        Sample::counter(
            "herald_channel_resyncs",
            "Times a channel's subscribers were told to resubscribe (2500).",
            resyncs,
        ),
        Sample::counter(
            "herald_broker_reconnects",
            "Reconnections to the broker.",
            broker_reconnects,
        ),
        Sample::counter(
            "herald_proxy_calls",
            "Calls to the backend through a proxy.",
            load(&c.proxy_calls),
        ),
        Sample::counter(
            "herald_proxy_errors",
            "Proxy calls that failed (not reached, a bad status, no answer in time, garbage).",
            load(&c.proxy_errors),
        ),
        Sample::counter(
            "herald_webhook_events",
            "Webhook events recorded by this node.",
            load(&c.webhook_events),
        ),
        Sample::counter(
            "herald_webhook_delivered",
            "Webhook events delivered by this node.",
            load(&c.webhook_delivered),
        ),
        Sample::counter(
            "herald_webhook_failed_attempts",
            "Webhook attempts that failed and will be tried again.",
            load(&c.webhook_failed_attempts),
        ),
        Sample::counter(
            "herald_webhook_dead_letters",
            "Webhook events that became dead letters.",
            load(&c.webhook_dead_letters),
        ),
    ];
    out.push(Sample {
        label: Some(("version", env!("CARGO_PKG_VERSION").to_string())),
        ..Sample::gauge("herald_build_info", "The running build (always 1).", 1.0)
    });
    out.extend(process());
    out
}

/// The process's resident memory, CPU time and open descriptors, from
/// `/proc/self` (nothing where there is no `/proc`).
fn process() -> Vec<Sample> {
    let mut out = Vec::new();
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    if let Some(kb) = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
    {
        out.push(Sample::gauge(
            "process_resident_memory_bytes",
            "Resident memory size in bytes.",
            kb * 1024.0,
        ));
    }
    // utime and stime, fields 14 and 15, in USER_HZ (100 a second on Linux)
    // after the command name, which may hold spaces: count from its ')'.
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    let after_name = stat.rsplit_once(')').map(|(_, rest)| rest).unwrap_or("");
    let fields: Vec<&str> = after_name.split_whitespace().collect();
    if let (Some(u), Some(s)) = (fields.get(11), fields.get(12)) {
        if let (Ok(u), Ok(s)) = (u.parse::<f64>(), s.parse::<f64>()) {
            out.push(Sample {
                kind: Kind::Counter,
                ..Sample::gauge(
                    "process_cpu_seconds",
                    "User and system CPU time spent in seconds.",
                    (u + s) / 100.0,
                )
            });
        }
    }
    if let Ok(fds) = std::fs::read_dir("/proc/self/fd") {
        out.push(Sample::gauge(
            "process_open_fds",
            "Open file descriptors.",
            fds.count() as f64,
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

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
