//! What `/metrics` reads when scraped: the hub's gauges, the node's plain
//! counters, the process's memory, CPU time and descriptors, the build —
//! each a [`Sample`], written by the [`Samples`] collector.

use std::sync::atomic::{AtomicU64, Ordering};

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;

use super::Counters;
use crate::hub::Hub;

/// A value read when scraped.
#[derive(Debug, Clone)]
pub struct Sample {
    /// Without `_total` (counters get it when written).
    pub name: &'static str,
    pub help: &'static str,
    pub kind: Kind,
    pub value: f64,
    /// The series' one label; samples of the same name that follow, each
    /// with its label value, are further series of the family.
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

    /// A counter family with one series per value of `label`.
    pub fn counters(
        name: &'static str,
        help: &'static str,
        label: &'static str,
        series: &[(&str, u64)],
    ) -> Vec<Self> {
        series
            .iter()
            .map(|(value, n)| Self {
                label: Some((label, value.to_string())),
                ..Self::counter(name, help, *n)
            })
            .collect()
    }
}

#[derive(Debug)]
pub(super) struct Samples(pub(super) Vec<Sample>);

impl Collector for Samples {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        // Samples of one name in a row are one family, each its own series.
        for family in self.0.chunk_by(|a, b| a.name == b.name) {
            let first = &family[0];
            let kind = match first.kind {
                Kind::Gauge => ConstGauge::new(0i64).metric_type(),
                Kind::Counter => ConstCounter::new(0u64).metric_type(),
            };
            let mut metric = encoder.encode_descriptor(first.name, first.help, None, kind)?;
            if first.label.is_none() {
                value_of(first, metric)?;
                continue;
            }
            for s in family {
                let (key, value) = s.label.as_ref().map_or(("", ""), |(k, v)| (*k, v.as_str()));
                value_of(s, metric.encode_family(&[(key, value)])?)?;
            }
        }
        Ok(())
    }
}

/// Writes one series' value; whole numbers as integers.
fn value_of(
    s: &Sample,
    encoder: prometheus_client::encoding::MetricEncoder<'_>,
) -> Result<(), std::fmt::Error> {
    let whole = s.value.fract() == 0.0 && s.value.abs() < 9.0e15;
    match s.kind {
        Kind::Gauge if whole => ConstGauge::new(s.value as i64).encode(encoder),
        Kind::Gauge => ConstGauge::new(s.value).encode(encoder),
        Kind::Counter if whole => ConstCounter::new(s.value as u64).encode(encoder),
        Kind::Counter => ConstCounter::new(s.value).encode(encoder),
    }
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
    let [publications, joins, leaves] = h.sent_counts();
    let mut out = Sample::counters(
        "herald_client_messages_sent",
        "Publications, joins and leaves handed to this node's subscribers, by type (replies are counted by herald_client_command_duration_seconds).",
        "type",
        &[("publication", publications), ("join", joins), ("leave", leaves)],
    );
    out.extend([
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
            "herald_transport_messages_sent",
            "Messages written to clients: WebSocket messages and HTTP stream chunks (each may carry several frames).",
            load(&c.messages_out),
        ),
        Sample::counter(
            "herald_transport_bytes_sent",
            "Bytes of the messages written to clients.",
            load(&c.bytes_out),
        ),
        Sample::counter(
            "herald_transport_messages_received",
            "Messages read from clients: WebSocket messages and HTTP connect requests.",
            load(&c.messages_in),
        ),
        Sample::counter(
            "herald_transport_bytes_received",
            "Bytes of the messages read from clients.",
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
    ]);
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
