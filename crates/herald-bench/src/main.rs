//! The `herald-bench` binary: parses flags, runs one scenario, prints its
//! report. Targets must be loopback addresses.

use std::time::Duration;

use anyhow::Context;
use clap::{Args, Parser, Subcommand};
use herald_bench::report;
use herald_bench::scenario::{durable_publish, fanout};
use herald_bench::target::{Auth, Target};

#[derive(Parser)]
#[command(
    name = "herald-bench",
    version,
    about = "Load generator for a live Herald (loopback targets only)"
)]
struct Cli {
    #[command(subcommand)]
    scenario: Scenario,
}

#[derive(Subcommand)]
enum Scenario {
    /// Publishers publishing sequentially (send, await the reply, repeat):
    /// acknowledged publications/s and publish latency.
    DurablePublish(DurablePublishArgs),
    /// Subscribers on one channel, publications through the HTTP API at a
    /// fixed rate: deliveries/s, delivery latency, losses.
    Fanout(FanoutArgs),
}

/// Flags every scenario takes.
#[derive(Args)]
struct Common {
    /// WebSocket endpoint of the server (loopback only).
    #[arg(long, default_value = "ws://127.0.0.1:8000/connection/websocket")]
    url: String,
    /// Connection token sent by every connection.
    #[arg(long, conflicts_with = "hmac_secret")]
    token: Option<String>,
    /// Sign an HS256 token per connection with this secret (the server's
    /// `client.token.hmac_secret_key`). Without it or --token, connections
    /// are anonymous (a `--dev` server).
    #[arg(long)]
    hmac_secret: Option<String>,
    /// Measured time, e.g. `10s`, `1m` (bare numbers are seconds).
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    duration: Duration,
    /// Time before the measurement: load runs but is not recorded.
    #[arg(long, default_value = "2s", value_parser = parse_duration)]
    warmup: Duration,
    /// Print only the JSON report (one line).
    #[arg(long)]
    json: bool,
    /// No progress line on stderr.
    #[arg(long)]
    quiet: bool,
}

impl Common {
    fn target(&self) -> anyhow::Result<Target> {
        Ok(Target::parse(&self.url)?)
    }

    fn auth(&self) -> Auth {
        match (&self.token, &self.hmac_secret) {
            (Some(t), _) => Auth::Token(t.clone()),
            (None, Some(s)) => Auth::Hmac(s.clone()),
            (None, None) => Auth::None,
        }
    }
}

#[derive(Args)]
struct DurablePublishArgs {
    #[command(flatten)]
    common: Common,
    /// Channels are `<prefix>-0` … `<prefix>-<channels-1>`; the namespace
    /// (before `:`) decides the history storage.
    #[arg(long, default_value = "durable:bench")]
    channel_prefix: String,
    #[arg(long, default_value_t = 8)]
    channels: usize,
    /// Publisher connections; publisher i publishes into channel i mod channels.
    #[arg(long, default_value_t = 32)]
    publishers: usize,
    /// Size in bytes of each publication's data (a JSON object with a padded string).
    #[arg(long, default_value_t = 200)]
    payload: usize,
}

#[derive(Args)]
struct FanoutArgs {
    #[command(flatten)]
    common: Common,
    /// Server API key (`http_api.key`), sent as X-API-Key; none for a `--dev` server.
    #[arg(long)]
    api_key: Option<String>,
    #[arg(long, default_value = "bench")]
    channel: String,
    #[arg(long, default_value_t = 100)]
    subscribers: usize,
    /// Publications per second through the HTTP API.
    #[arg(long, default_value_t = 10.0)]
    rate: f64,
    /// Size in bytes of each publication's data (at least the timestamp).
    #[arg(long, default_value_t = 100)]
    payload: usize,
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    if let Ok(secs) = s.parse::<f64>() {
        return Duration::try_from_secs_f64(secs).map_err(|e| e.to_string());
    }
    humantime::parse_duration(s).map_err(|e| e.to_string())
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    match run(cli).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("herald-bench: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.scenario {
        Scenario::DurablePublish(a) => {
            let c = &a.common;
            let options = durable_publish::Options {
                target: c.target()?,
                auth: c.auth(),
                channel_prefix: a.channel_prefix,
                channels: a.channels,
                publishers: a.publishers,
                payload: a.payload,
                duration: c.duration,
                warmup: c.warmup,
                progress: !c.quiet,
            };
            let r = durable_publish::run(&options)
                .await
                .context("durable-publish")?;
            report::print(&r, c.json);
            if r.acked == 0 {
                anyhow::bail!("no publication was acknowledged (see the errors above)");
            }
        }
        Scenario::Fanout(a) => {
            let c = &a.common;
            let options = fanout::Options {
                target: c.target()?,
                auth: c.auth(),
                api_key: a.api_key,
                channel: a.channel,
                subscribers: a.subscribers,
                rate: a.rate,
                payload: a.payload,
                duration: c.duration,
                warmup: c.warmup,
                progress: !c.quiet,
            };
            let r = fanout::run(&options).await.context("fanout")?;
            report::print(&r, c.json);
            if r.delivered == 0 {
                anyhow::bail!("no publication was delivered (see the errors above)");
            }
        }
    }
    Ok(())
}
