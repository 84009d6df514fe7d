//! `fanout`: N subscribers on one channel; publications go through an HTTP
//! publish endpoint at a fixed rate, each stamped with its send time, and
//! every subscriber measures delivery latency (receive time minus stamp).
//! Stamps are Unix time read off this process's monotonic clock, so that
//! with `--listen-only` and one `--start-at` several processes (each
//! holding its share of the subscribers, e.g. one per cluster node) measure
//! the same publications. With
//! `--server-pid`, the server's CPU over the measured window is charged to
//! the deliveries made in it.

use std::time::Duration;

use serde::Serialize;

use super::delivery::{self, Delivered, Load};
use super::{Dialer, Opened, ScenarioError};
use crate::report::{ErrorCounts, Report, Table};
use crate::stats::Progress;
use crate::target::{Auth, Target, Transport};

/// A run "keeps up" when it delivers at least this share of what was
/// offered, loses nothing, drops no subscriber and its p99 stays under
/// [`KEEP_UP_P99`].
pub const KEEP_UP_SHARE: f64 = 0.95;
pub const KEEP_UP_P99: Duration = Duration::from_millis(250);

/// What to run.
#[derive(Debug, Clone)]
pub struct Options {
    pub target: Target,
    /// Other nodes of the same cluster: subscribers are spread evenly over
    /// `target` and these; publications go through `target`.
    pub other_nodes: Vec<Target>,
    pub auth: Auth,
    pub channel: String,
    pub subscribers: usize,
    pub load: Load,
}

/// Every figure of a run.
#[derive(Debug, Serialize)]
pub struct FanoutReport {
    pub scenario: &'static str,
    pub url: String,
    /// Nodes the subscribers were spread over.
    pub nodes: usize,
    pub protocol: &'static str,
    pub transport: Transport,
    pub channel: String,
    pub subscribers: usize,
    pub connected: usize,
    pub connect_errors: ErrorCounts,
    /// Deliveries asked for: rate × connected subscribers.
    pub offered_per_s: f64,
    #[serde(flatten)]
    pub run: Delivered,
    /// Acknowledged publications a connected subscriber never received.
    pub lost: u64,
    /// Deliveries whose sequence number was not above the previous one of
    /// the same publisher.
    pub out_of_order: u64,
    /// Whether the server kept up (see [`KEEP_UP_SHARE`]).
    pub kept_up: bool,
    /// Subscribers only: another process published (`lost` is its to
    /// count).
    pub listen_only: bool,
}

impl Report for FanoutReport {
    fn clean(&self) -> bool {
        self.connected == self.subscribers && self.lost == 0 && self.run.clean()
    }
    fn nothing_done(&self) -> Option<&'static str> {
        self.run.nothing_done()
    }
    fn table(&self) -> String {
        let mut t = Table::new("herald-bench fanout");
        t.row(
            "url",
            format_args!("{} ({}, {:?})", self.url, self.protocol, self.transport),
        )
        .row("nodes", self.nodes)
        .row("channel", &self.channel)
        .row(
            "subscribers connected",
            format_args!("{} / {}", self.connected, self.subscribers),
        );
        self.run.load_rows(&mut t);
        t.row("delivered", self.run.delivered).row(
            "delivered/s",
            format_args!(
                "{:.0} of {:.0} offered",
                self.run.delivered_per_s, self.offered_per_s
            ),
        );
        self.run
            .tail_rows(&mut t, self.lost, Some(self.out_of_order));
        t.row("kept up", self.kept_up).finish()
    }
}

fn validate(o: &Options) -> Result<(), ScenarioError> {
    if o.subscribers == 0 {
        return Err(ScenarioError::Invalid(
            "--subscribers must be at least 1".into(),
        ));
    }
    Ok(())
}

/// Runs the scenario: connect and subscribe everyone, publish for warm-up +
/// duration, then wait (bounded) for deliveries.
pub async fn run(o: &Options) -> Result<FanoutReport, ScenarioError> {
    validate(o)?;
    let load = &o.load;
    let (sources, api) = load.prepare(o.subscribers, &o.target)?;
    let nodes: Vec<&Target> = std::iter::once(&o.target).chain(&o.other_nodes).collect();
    let mut opened = Opened::default();
    for (i, target) in nodes.iter().enumerate() {
        // Subscribers split evenly, the first nodes taking the remainder.
        let share = o.subscribers / nodes.len() + usize::from(i < o.subscribers % nodes.len());
        let dialer = Dialer {
            target,
            auth: &o.auth,
            sources: &sources,
            concurrency: load.connect_concurrency,
        };
        let more = dialer
            .open(share, |_| vec![o.channel.clone()], &Progress::default())
            .await?;
        opened.merge(more);
    }
    let opened = opened.nonempty("subscriber")?;
    let connected = opened.clients.len();
    let channel = &o.channel;
    let pick = |_| (channel.clone(), connected as u64);
    let out = delivery::run(load, &api, opened.clients, true, pick).await?;
    let run = out.delivered;
    let offered_per_s = load.rate * connected as f64;
    // Listening only, what was published is another process's to say.
    let lost = if load.listen_only {
        0
    } else {
        out.missed_by_each
    };
    let kept_up = run.delivered_per_s >= KEEP_UP_SHARE * offered_per_s
        && lost == 0
        && run.subscribers_dropped == 0
        && run.latency.p99_us <= KEEP_UP_P99.as_micros() as u64;
    Ok(FanoutReport {
        scenario: "fanout",
        url: o.target.ws_url.clone(),
        nodes: nodes.len(),
        protocol: o.target.protocol.name(),
        transport: o.target.transport,
        channel: o.channel.clone(),
        subscribers: o.subscribers,
        connected,
        connect_errors: opened.errors,
        offered_per_s,
        run,
        lost,
        out_of_order: out.out_of_order,
        kept_up,
        listen_only: load.listen_only,
    })
}
