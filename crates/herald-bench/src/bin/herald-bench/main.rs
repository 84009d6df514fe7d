//! The `herald-bench` binary: parses flags, runs one scenario (or the bare
//! reference server), prints its report. Targets must be loopback
//! addresses.

use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use herald_bench::report;
use herald_bench::scenario::delivery::Load;
use herald_bench::scenario::{
    api_publish, chat, connect_storm, durable_publish, fanout, idle, many_channels,
    CONNECT_CONCURRENCY, CONNECT_TIMEOUT,
};

mod flags;

use flags::{ApiTransport, Cli, Common, Scenario};

/// Longest any run may take beyond what its flags ask for (connecting,
/// draining, closing); past it the process exits.
const RUN_SLACK: Duration = Duration::from_secs(120);

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let (name, outcome) = match cli.scenario {
        Scenario::BareServer(o) => ("bare-server", herald_bench::bare::serve(o).await),
        Scenario::Backend(o) => ("backend", herald_bench::backend::serve(o).await),
        scenario => return measure(scenario).await,
    };
    match outcome {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("herald-bench {name}: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

/// Runs a scenario, bounded by what its flags ask for.
async fn measure(scenario: Scenario) -> std::process::ExitCode {
    let limit = scenario.planned() + RUN_SLACK;
    match tokio::time::timeout(limit, run(scenario)).await {
        Ok(Ok(())) => std::process::ExitCode::SUCCESS,
        Ok(Err(e)) => {
            eprintln!("herald-bench: {e:#}");
            std::process::ExitCode::FAILURE
        }
        Err(_) => {
            eprintln!("herald-bench: the run did not end within {limit:?}; stopped");
            std::process::ExitCode::FAILURE
        }
    }
}

impl Scenario {
    /// How long the flags ask the run to last, with its connecting at
    /// worst (every wave of connections waiting out the connect timeout).
    fn planned(&self) -> Duration {
        let connecting =
            |n: usize, concurrency: usize| CONNECT_TIMEOUT * n.div_ceil(concurrency.max(1)) as u32;
        match self {
            Scenario::DurablePublish(a) => {
                a.timing.total() + connecting(a.publishers, CONNECT_CONCURRENCY)
            }
            Scenario::Fanout(a) => {
                a.timing.total() + connecting(a.subscribers, a.many.connect_concurrency)
            }
            Scenario::ManyChannels(a) => {
                a.timing.total() + connecting(a.connections, a.many.connect_concurrency)
            }
            Scenario::Idle(a) => {
                a.settle + a.hold + connecting(a.connections, a.many.connect_concurrency)
            }
            Scenario::Chat(a) => {
                a.timing.total() + connecting(a.connections, a.many.connect_concurrency)
            }
            Scenario::ConnectStorm(a) => connecting(a.clients, a.concurrency),
            Scenario::ApiPublish(a) => a.timing.total(),
            Scenario::BareServer(_) | Scenario::Backend(_) => Duration::ZERO,
        }
    }
}

/// Prints the report; fails when the run measured nothing, or, with
/// `--strict`, when it was not clean.
fn finish(r: &impl report::Report, c: &Common) -> anyhow::Result<()> {
    report::print(r, c.json);
    if c.strict && !r.clean() {
        anyhow::bail!("--strict: not every connection opened and stayed open, or something was lost or failed (see the report)");
    }
    if let Some(why) = r.nothing_done() {
        anyhow::bail!("{why} (see the errors above)");
    }
    Ok(())
}

async fn run(scenario: Scenario) -> anyhow::Result<()> {
    match scenario {
        Scenario::DurablePublish(a) => {
            let c = &a.common;
            let options = durable_publish::Options {
                target: c.target()?,
                auth: c.auth(),
                channel_prefix: a.channel_prefix,
                channels: a.channels,
                publishers: a.publishers,
                payload: a.payload,
                duration: a.timing.duration,
                warmup: a.timing.warmup,
                progress: !c.quiet,
            };
            let r = durable_publish::run(&options)
                .await
                .context("durable-publish")?;
            finish(&r, c)?;
        }
        Scenario::Fanout(a) => {
            let (c, p) = (&a.common, a.publishing);
            let other_nodes = a
                .also_url
                .iter()
                .map(|u| a.reach.target(c, u))
                .collect::<anyhow::Result<Vec<_>>>()?;
            let options = fanout::Options {
                target: a.reach.target(c, &c.url)?,
                other_nodes,
                auth: c.auth(),
                channel: a.channel,
                subscribers: a.subscribers,
                load: Load {
                    listen_only: a.listen_only,
                    ..p.load(&a.timing, &a.many, !c.quiet)
                },
            };
            let r = fanout::run(&options).await.context("fanout")?;
            finish(&r, c)?;
        }
        Scenario::Idle(a) => {
            let c = &a.common;
            let options = idle::Options {
                target: a.reach.target(c, &c.url)?,
                auth: c.auth(),
                connections: a.connections,
                channel_prefix: a.channel_prefix,
                channels: a.channels,
                settle: a.settle,
                hold: a.hold,
                server_pids: a.many.server_pid,
                source_ips: a.many.source_ips,
                connect_concurrency: a.many.connect_concurrency,
                progress: !c.quiet,
            };
            let r = idle::run(&options).await.context("idle")?;
            finish(&r, c)?;
        }
        Scenario::ManyChannels(a) => {
            let (c, p) = (&a.common, a.publishing);
            let options = many_channels::Options {
                target: c.target()?,
                auth: c.auth(),
                channel_prefix: a.channel_prefix,
                connections: a.connections,
                group_size: a.group_size,
                group_ratio: a.group_ratio,
                load: p.load(&a.timing, &a.many, !c.quiet),
            };
            let r = many_channels::run(&options)
                .await
                .context("many-channels")?;
            finish(&r, c)?;
        }
        Scenario::Chat(a) => {
            let c = &a.common;
            let options = chat::Options {
                target: c.target()?,
                auth: c.auth(),
                channel_prefix: a.channel_prefix,
                connections: a.connections,
                room_min: a.room_min,
                room_max: a.room_max,
                rate: a.rate,
                rejoin_rate: a.rejoin_rate,
                history_limit: a.history_limit,
                payload: a.payload,
                duration: a.timing.duration,
                warmup: a.timing.warmup,
                progress: !c.quiet,
                server_pids: a.many.server_pid,
                source_ips: a.many.source_ips,
                connect_concurrency: a.many.connect_concurrency,
            };
            let r = chat::run(&options).await.context("chat")?;
            finish(&r, c)?;
        }
        Scenario::ConnectStorm(a) => {
            let c = &a.common;
            let options = connect_storm::Options {
                target: c.target()?,
                auth: c.auth(),
                clients: a.clients,
                concurrency: a.concurrency,
                channel_prefix: a.channel_prefix,
                server_pid: a.server_pid,
                source_ips: a.source_ips,
                progress: !c.quiet,
            };
            let r = connect_storm::run(&options)
                .await
                .context("connect-storm")?;
            finish(&r, c)?;
        }
        Scenario::ApiPublish(a) => {
            let c = &a.common;
            let via = match a.transport {
                ApiTransport::Http => api_publish::Via::Http { url: a.api_url },
                ApiTransport::Grpc => api_publish::Via::Grpc { addr: a.grpc_addr },
            };
            let options = api_publish::Options {
                via,
                key: a.api_key,
                channel_prefix: a.channel_prefix,
                channels: a.channels,
                concurrency: a.concurrency,
                payload: a.payload,
                duration: a.timing.duration,
                warmup: a.timing.warmup,
                server_pid: a.server_pid,
                progress: !c.quiet,
            };
            let r = api_publish::run(&options).await.context("api-publish")?;
            finish(&r, c)?;
        }
        Scenario::BareServer(_) | Scenario::Backend(_) => unreachable!("handled in main"),
    }
    Ok(())
}
