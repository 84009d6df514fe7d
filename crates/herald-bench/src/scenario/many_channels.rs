//! `many-channels`: connection i subscribes to its personal channel
//! `<prefix>u.<i>` and to its group's `<prefix>g.<i / group-size>`;
//! publications go, at a fixed total rate, to a random group channel (with
//! probability `--group-ratio`) or a random personal channel. The deliveries
//! each acknowledged publication should make are counted exactly, so losses
//! are exact too.

use serde::Serialize;

use super::delivery::{self, Delivered, Load};
use super::{mix, Dialer, ScenarioError};
use crate::report::{ErrorCounts, Report, Table};
use crate::stats::Progress;
use crate::target::{Auth, Target};

/// What to run.
#[derive(Debug, Clone)]
pub struct Options {
    pub target: Target,
    pub auth: Auth,
    /// Channel names start with this (e.g. a namespace `ns:`).
    pub channel_prefix: String,
    pub connections: usize,
    pub group_size: usize,
    /// Share of publications that go to a group channel (0..=1).
    pub group_ratio: f64,
    pub load: Load,
}

/// Every figure of a run.
#[derive(Debug, Serialize)]
pub struct ManyChannelsReport {
    pub scenario: &'static str,
    pub url: String,
    pub protocol: &'static str,
    pub connections: usize,
    pub group_size: usize,
    pub group_ratio: f64,
    pub connected: usize,
    pub connect_errors: ErrorCounts,
    /// Deliveries the acknowledged publications should have made.
    pub expected: u64,
    #[serde(flatten)]
    pub run: Delivered,
    /// Expected deliveries that never arrived.
    pub lost: u64,
}

impl Report for ManyChannelsReport {
    fn clean(&self) -> bool {
        self.connected == self.connections && self.lost == 0 && self.run.clean()
    }
    fn nothing_done(&self) -> Option<&'static str> {
        self.run.nothing_done()
    }
    fn table(&self) -> String {
        let mut t = Table::new("herald-bench many-channels");
        t.row("url", format_args!("{} ({})", self.url, self.protocol))
            .row(
                "connections",
                format_args!(
                    "{} / {}, groups of {}, {:.0}% to groups",
                    self.connected,
                    self.connections,
                    self.group_size,
                    self.group_ratio * 100.0
                ),
            );
        self.run.load_rows(&mut t);
        t.row(
            "delivered",
            format_args!("{} of {} expected", self.run.delivered, self.expected),
        )
        .row(
            "delivered/s",
            format_args!("{:.0}", self.run.delivered_per_s),
        );
        self.run.tail_rows(&mut t, self.lost, None);
        t.finish()
    }
}

fn validate(o: &Options) -> Result<(), ScenarioError> {
    if o.connections == 0 || o.group_size == 0 || !(0.0..=1.0).contains(&o.group_ratio) {
        return Err(ScenarioError::Invalid(
            "--connections and --group-size must be at least 1, --group-ratio in [0, 1]".into(),
        ));
    }
    Ok(())
}

/// Runs the scenario: connect and subscribe everyone, publish for warm-up +
/// duration, wait (bounded) for the expected deliveries.
pub async fn run(o: &Options) -> Result<ManyChannelsReport, ScenarioError> {
    validate(o)?;
    let load = &o.load;
    let (sources, api) = load.prepare(o.connections, &o.target)?;
    let dialer = Dialer {
        target: &o.target,
        auth: &o.auth,
        sources: &sources,
        concurrency: load.connect_concurrency,
    };
    let (prefix, g) = (&o.channel_prefix, o.group_size);
    let opened = dialer
        .open(
            o.connections,
            |i| vec![format!("{prefix}u.{i}"), format!("{prefix}g.{}", i / g)],
            &Progress::default(),
        )
        .await?;
    let opened = opened.nonempty("connection")?;
    let connected = opened.clients.len();
    // Who is there to receive: members per group, and each personal channel.
    let groups = o.connections.div_ceil(g);
    let mut members = vec![0u64; groups];
    let mut present = vec![false; o.connections];
    for (i, _) in &opened.clients {
        members[i / g] += 1;
        present[*i] = true;
    }
    let threshold = (o.group_ratio * 1_000_000.0) as u64;
    let pick = |n| {
        let h = mix(n);
        let pick = (h >> 24) as usize;
        if h % 1_000_000 < threshold {
            let k = pick % groups;
            (format!("{prefix}g.{k}"), members[k])
        } else {
            let k = pick % o.connections;
            (format!("{prefix}u.{k}"), u64::from(present[k]))
        }
    };
    let out = delivery::run(load, &api, opened.clients, false, pick).await?;
    let expected = out.sent.expected;
    Ok(ManyChannelsReport {
        scenario: "many-channels",
        url: o.target.ws_url.clone(),
        protocol: o.target.protocol.name(),
        connections: o.connections,
        group_size: o.group_size,
        group_ratio: o.group_ratio,
        connected,
        connect_errors: opened.errors,
        expected,
        lost: expected.saturating_sub(out.delivered.delivered),
        run: out.delivered,
    })
}
