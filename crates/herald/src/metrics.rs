//! What `/metrics` shows: this node's counters and gauges in Prometheus's
//! text format.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::hub::Hub;

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
}

impl Counters {
    pub fn incr(c: &AtomicU64) {
        c.fetch_add(1, Ordering::Relaxed);
    }

    pub fn add(c: &AtomicU64, n: u64) {
        c.fetch_add(n, Ordering::Relaxed);
    }
}

/// Every metric in Prometheus's text format: the counters, the hub's
/// figures, and the other parts' own counts.
pub fn render(c: &Counters, h: &Hub, retention_removed: u64, broker_reconnects: u64) -> String {
    let (gaps_filled, resyncs) = h.gap_counts();
    let load = |v: &AtomicU64| v.load(Ordering::Relaxed);
    let metrics: [(&str, &str, u64); 21] = [
        ("herald_connections", "gauge", h.num_clients() as u64),
        ("herald_users", "gauge", h.num_users() as u64),
        ("herald_channels", "gauge", h.num_channels() as u64),
        (
            "herald_subscriptions",
            "gauge",
            h.num_subscriptions() as u64,
        ),
        (
            "herald_connections_accepted_total",
            "counter",
            load(&c.connections_accepted),
        ),
        (
            "herald_publications_total",
            "counter",
            load(&c.publications),
        ),
        (
            "herald_slow_disconnects_total",
            "counter",
            load(&c.slow_disconnects),
        ),
        ("herald_commands_total", "counter", load(&c.commands)),
        (
            "herald_api_requests_total",
            "counter",
            load(&c.api_requests),
        ),
        (
            "herald_retention_removed_total",
            "counter",
            retention_removed,
        ),
        (
            "herald_connections_rate_limited_total",
            "counter",
            load(&c.connections_refused_by_rate),
        ),
        (
            "herald_commands_rate_limited_total",
            "counter",
            load(&c.commands_refused_by_rate),
        ),
        ("herald_stream_gaps_filled_total", "counter", gaps_filled),
        ("herald_proxy_calls_total", "counter", load(&c.proxy_calls)),
        (
            "herald_webhook_events_total",
            "counter",
            load(&c.webhook_events),
        ),
        (
            "herald_webhook_delivered_total",
            "counter",
            load(&c.webhook_delivered),
        ),
        (
            "herald_webhook_failed_attempts_total",
            "counter",
            load(&c.webhook_failed_attempts),
        ),
        (
            "herald_webhook_dead_letters_total",
            "counter",
            load(&c.webhook_dead_letters),
        ),
        (
            "herald_proxy_errors_total",
            "counter",
            load(&c.proxy_errors),
        ),
        ("herald_channel_resyncs_total", "counter", resyncs),
        (
            "herald_broker_reconnects_total",
            "counter",
            broker_reconnects,
        ),
    ];
    let mut out = String::with_capacity(1024);
    for (name, kind, value) in metrics {
        let _ = writeln!(out, "# TYPE {name} {kind}\n{name} {value}");
    }
    out
}
