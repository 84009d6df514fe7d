//! The `herald-bench` binary: parses flags, runs one scenario (or the bare
//! reference server), prints its report. Targets must be loopback
//! addresses.

use std::time::Duration;

use anyhow::Context;
use clap::{Args, Parser, Subcommand};
use herald_bench::protocol::Protocol;
use herald_bench::report;
use herald_bench::scenario::delivery::Load;
use herald_bench::scenario::{
    api_publish, connect_storm, durable_publish, fanout, idle, many_channels, CONNECT_CONCURRENCY,
    CONNECT_TIMEOUT,
};
use herald_bench::target::{Auth, Target, Transport};

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
    /// The server API's publish at a fixed concurrency over HTTP or gRPC:
    /// publications/s, publish latency, server CPU per publication.
    ApiPublish(ApiPublishArgs),
    /// Subscribers on one channel, publications through the HTTP API at a
    /// fixed rate: deliveries/s, delivery latency, losses, server CPU per
    /// delivery.
    Fanout(FanoutArgs),
    /// Connections each subscribed to its own channel, held idle: server
    /// memory per connection.
    Idle(IdleArgs),
    /// Personal and group channels, publications to random ones: exact
    /// deliveries, latency, losses.
    ManyChannels(ManyChannelsArgs),
    /// Clients connecting and subscribing with bounded concurrency:
    /// connects/s, failures, server CPU per connect.
    ConnectStorm(ConnectStormArgs),
    /// A minimal fan-out WebSocket server with no protocol logic, as a
    /// reference for what this machine can do.
    BareServer(herald_bench::bare::Options),
    /// An application backend for Herald's connect proxy and webhooks that
    /// counts what it gets (`GET /stats`).
    Backend(herald_bench::backend::Options),
}

/// Flags every scenario takes.
#[derive(Args)]
struct Common {
    /// WebSocket endpoint of the server (loopback only).
    #[arg(long, default_value = "ws://127.0.0.1:8000/connection/websocket")]
    url: String,
    /// Client protocol the server speaks.
    #[arg(long, value_enum, default_value_t = Protocol::V2Json)]
    protocol: Protocol,
    /// Connection token sent by every connection.
    #[arg(long, conflicts_with = "hmac_secret")]
    token: Option<String>,
    /// Sign an HS256 token per connection with this secret (the server's
    /// `client.token.hmac_secret_key`). Without it or --token, connections
    /// are anonymous (a `--dev` server).
    #[arg(long)]
    hmac_secret: Option<String>,
    /// Print only the JSON report (one line).
    #[arg(long)]
    json: bool,
    /// No progress line on stderr.
    #[arg(long)]
    quiet: bool,
    /// Exit with an error unless every connection opened and stayed open,
    /// every publication was acknowledged and nothing was lost (for smoke
    /// tests; speed is never checked).
    #[arg(long)]
    strict: bool,
}

/// Timing of scenarios with a measured window.
#[derive(Args)]
struct Timing {
    /// Measured time, e.g. `10s`, `1m` (bare numbers are seconds).
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    duration: Duration,
    /// Time before the measurement: load runs but is not recorded.
    #[arg(long, default_value = "2s", value_parser = parse_duration)]
    warmup: Duration,
}

/// Flags of scenarios that open many connections.
#[derive(Args)]
struct Many {
    /// PID of the server process, to read its CPU time and memory from
    /// /proc; repeated for a cluster's nodes, whose figures are added up.
    #[arg(long = "server-pid")]
    server_pid: Vec<u32>,
    /// Bind connections round robin to 127.0.0.1 … 127.0.0.K (each source
    /// address has ~28k ephemeral ports); chosen automatically when needed.
    #[arg(long)]
    source_ips: Option<usize>,
    /// Connections being opened at once.
    #[arg(long, default_value_t = CONNECT_CONCURRENCY)]
    connect_concurrency: usize,
}

/// Flags of scenarios that publish over HTTP.
#[derive(Args)]
struct Publishing {
    /// Server API key (`http_api.key`), sent as X-API-Key; none for a `--dev` server.
    #[arg(long)]
    api_key: Option<String>,
    /// Publish endpoint taking `{"channel":…,"data":…}`; by default the
    /// server API's /api/publish next to --url.
    #[arg(long)]
    publish_url: Option<String>,
    /// Publications per second, all publishers together.
    #[arg(long, default_value_t = 10.0)]
    rate: f64,
    /// Concurrent HTTP publishers sharing the rate.
    #[arg(long, default_value_t = 2)]
    publishers: usize,
    /// Size in bytes of each publication's data (at least the stamp).
    #[arg(long, default_value_t = 100)]
    payload: usize,
}

#[derive(Args)]
struct DurablePublishArgs {
    #[command(flatten)]
    common: Common,
    #[command(flatten)]
    timing: Timing,
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

#[derive(Clone, Copy, clap::ValueEnum)]
enum ApiTransport {
    Http,
    Grpc,
}

#[derive(Args)]
struct ApiPublishArgs {
    #[command(flatten)]
    common: Common,
    #[command(flatten)]
    timing: Timing,
    #[arg(long, value_enum, default_value_t = ApiTransport::Http)]
    transport: ApiTransport,
    /// The HTTP API's base URL (methods at `<url>/<method>`).
    #[arg(long, default_value = "http://127.0.0.1:8000/api")]
    api_url: String,
    /// The gRPC API's address.
    #[arg(long, default_value = "127.0.0.1:10000")]
    grpc_addr: String,
    /// Channels are `<prefix>-0` … `<prefix>-<channels-1>`; the namespace
    /// (before `:`) decides whether they keep history.
    #[arg(long, default_value = "bench")]
    channel_prefix: String,
    #[arg(long, default_value_t = 8)]
    channels: usize,
    /// Calls in flight at once (each caller waits for its reply).
    #[arg(long, default_value_t = 32)]
    concurrency: usize,
    /// Size in bytes of each publication's data.
    #[arg(long, default_value_t = 200)]
    payload: usize,
    /// PID of the server process, to read its CPU time from /proc.
    #[arg(long)]
    server_pid: Option<u32>,
    /// The API key: `http_api.key` (sent as X-API-Key) or `grpc_api.key`
    /// (metadata `authorization: apikey …`); none for a server without one.
    #[arg(long)]
    api_key: Option<String>,
}

#[derive(Args)]
struct FanoutArgs {
    #[command(flatten)]
    common: Common,
    #[command(flatten)]
    reach: Reach,
    #[command(flatten)]
    timing: Timing,
    #[command(flatten)]
    many: Many,
    #[command(flatten)]
    publishing: Publishing,
    #[arg(long, default_value = "bench")]
    channel: String,
    #[arg(long, default_value_t = 100)]
    subscribers: usize,
    /// Another node of the same cluster (repeatable): subscribers are spread
    /// evenly over --url and these nodes; publications go through --url.
    #[arg(long = "also-url")]
    also_url: Vec<String>,
}

#[derive(Args)]
struct IdleArgs {
    #[command(flatten)]
    common: Common,
    #[command(flatten)]
    reach: Reach,
    #[command(flatten)]
    many: Many,
    #[arg(long, default_value_t = 1000)]
    connections: usize,
    /// Connection i subscribes to `<prefix>.<i>`.
    #[arg(long, default_value = "idle")]
    channel_prefix: String,
    /// Share K channels (connection i subscribes to `<prefix>.<i mod K>`);
    /// 0 gives every connection its own.
    #[arg(long, default_value_t = 0)]
    channels: usize,
    /// Wait after connecting before the first memory reading.
    #[arg(long, default_value = "5s", value_parser = parse_duration)]
    settle: Duration,
    /// Then hold the connections this long before the second reading.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    hold: Duration,
}

#[derive(Args)]
struct ManyChannelsArgs {
    #[command(flatten)]
    common: Common,
    #[command(flatten)]
    timing: Timing,
    #[command(flatten)]
    many: Many,
    #[command(flatten)]
    publishing: Publishing,
    #[arg(long, default_value_t = 1000)]
    connections: usize,
    /// Connections per group channel.
    #[arg(long, default_value_t = 10)]
    group_size: usize,
    /// Share of publications sent to a group channel (else personal).
    #[arg(long, default_value_t = 0.5)]
    group_ratio: f64,
    /// Channel names start with this (e.g. `ns:`).
    #[arg(long, default_value = "")]
    channel_prefix: String,
}

#[derive(Args)]
struct ConnectStormArgs {
    #[command(flatten)]
    common: Common,
    /// PID of the server process, to read its CPU time from /proc.
    #[arg(long)]
    server_pid: Option<u32>,
    /// Bind connections round robin to 127.0.0.1 … 127.0.0.K.
    #[arg(long)]
    source_ips: Option<usize>,
    #[arg(long, default_value_t = 1000)]
    clients: usize,
    /// Connections being opened at once.
    #[arg(long, default_value_t = 200)]
    concurrency: usize,
    /// Client i subscribes to `<prefix>.<i>`.
    #[arg(long, default_value = "storm")]
    channel_prefix: String,
}

impl Timing {
    fn total(&self) -> Duration {
        self.warmup + self.duration
    }
}

impl Common {
    fn target(&self) -> anyhow::Result<Target> {
        Ok(Target::parse(&self.url)?.with_protocol(self.protocol))
    }

    fn auth(&self) -> Auth {
        match (&self.token, &self.hmac_secret) {
            (Some(t), _) => Auth::Token(t.clone()),
            (None, Some(s)) => Auth::Hmac(s.clone()),
            (None, None) => Auth::None,
        }
    }
}

/// How a scenario's connections reach the server (fanout, idle).
#[derive(Args)]
struct Reach {
    /// The WebSocket at --url, or an emulated transport on the same host
    /// and port (JSON only).
    #[arg(long, value_enum, default_value_t = Transport::WebSocket)]
    transport: Transport,
    /// Offer WebSocket permessage-deflate (the server must agree:
    /// `websocket.compression`).
    #[arg(long)]
    compression: bool,
}

impl Reach {
    /// `url` spoken to as `common` and this say.
    fn target(&self, common: &Common, url: &str) -> anyhow::Result<Target> {
        if self.transport != Transport::WebSocket && common.protocol != Protocol::V2Json {
            anyhow::bail!(
                "--transport {:?} speaks centrifuge-v2-json only",
                self.transport
            );
        }
        if self.compression && self.transport != Transport::WebSocket {
            anyhow::bail!("--compression is for --transport websocket");
        }
        let target = Target::parse(url)?.with_protocol(common.protocol);
        Ok(target
            .with_transport(self.transport)
            .with_compression(self.compression))
    }
}

impl Publishing {
    /// The load of a publishing scenario from its flags.
    fn load(self, timing: &Timing, many: &Many, progress: bool) -> Load {
        Load {
            api_key: self.api_key,
            publish_url: self.publish_url,
            rate: self.rate,
            publishers: self.publishers,
            payload: self.payload,
            duration: timing.duration,
            warmup: timing.warmup,
            progress,
            server_pids: many.server_pid.clone(),
            source_ips: many.source_ips,
            connect_concurrency: many.connect_concurrency,
        }
    }
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    if let Ok(secs) = s.parse::<f64>() {
        return Duration::try_from_secs_f64(secs).map_err(|e| e.to_string());
    }
    humantime::parse_duration(s).map_err(|e| e.to_string())
}

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
                load: p.load(&a.timing, &a.many, !c.quiet),
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
