//! The command line: one subcommand per scenario and the flags they share.

use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use herald_bench::protocol::Protocol;
use herald_bench::scenario::delivery::Load;
use herald_bench::scenario::CONNECT_CONCURRENCY;
use herald_bench::target::{Auth, Target, Transport};

#[derive(Parser)]
#[command(
    name = "herald-bench",
    version,
    about = "Load generator for a live Herald (loopback targets only)"
)]
pub struct Cli {
    #[command(subcommand)]
    pub scenario: Scenario,
}

#[derive(Subcommand)]
pub enum Scenario {
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
    /// Chat rooms of 10 to 50 members: client-side messages, members
    /// leaving and joining again (then reading history and presence):
    /// message latency, every command's reply latency, server CPU per
    /// delivery.
    Chat(ChatArgs),
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
pub struct Common {
    /// WebSocket endpoint of the server (loopback only).
    #[arg(long, default_value = "ws://127.0.0.1:8000/connection/websocket")]
    pub url: String,
    /// Client protocol the server speaks.
    #[arg(long, value_enum, default_value_t = Protocol::V2Json)]
    pub protocol: Protocol,
    /// Connection token sent by every connection.
    #[arg(long, conflicts_with = "hmac_secret")]
    pub token: Option<String>,
    /// Sign an HS256 token per connection with this secret (the server's
    /// `client.token.hmac_secret_key`). Without it or --token, connections
    /// are anonymous (a `--dev` server).
    #[arg(long)]
    pub hmac_secret: Option<String>,
    /// Print only the JSON report (one line).
    #[arg(long)]
    pub json: bool,
    /// No progress line on stderr.
    #[arg(long)]
    pub quiet: bool,
    /// Exit with an error unless every connection opened and stayed open,
    /// every publication was acknowledged and nothing was lost (for smoke
    /// tests; speed is never checked).
    #[arg(long)]
    pub strict: bool,
}

/// Timing of scenarios with a measured window.
#[derive(Args)]
pub struct Timing {
    /// Measured time, e.g. `10s`, `1m` (bare numbers are seconds).
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    pub duration: Duration,
    /// Time before the measurement: load runs but is not recorded.
    #[arg(long, default_value = "2s", value_parser = parse_duration)]
    pub warmup: Duration,
}

/// Flags of scenarios that open many connections.
#[derive(Args)]
pub struct Many {
    /// PID of the server process, to read its CPU time and memory from
    /// /proc; repeated for a cluster's nodes, whose figures are added up.
    #[arg(long = "server-pid")]
    pub server_pid: Vec<u32>,
    /// Bind connections round robin to 127.0.0.1 … 127.0.0.K (each source
    /// address has ~28k ephemeral ports); chosen automatically when needed.
    #[arg(long)]
    pub source_ips: Option<usize>,
    /// Connections being opened at once.
    #[arg(long, default_value_t = CONNECT_CONCURRENCY)]
    pub connect_concurrency: usize,
}

/// Flags of scenarios that publish over HTTP.
#[derive(Args)]
pub struct Publishing {
    /// Server API key (`http_api.key`), sent as X-API-Key; none for a `--dev` server.
    #[arg(long)]
    pub api_key: Option<String>,
    /// Publish endpoint taking `{"channel":…,"data":…}`; by default the
    /// server API's /api/publish next to --url.
    #[arg(long)]
    pub publish_url: Option<String>,
    /// Publications per second, all publishers together.
    #[arg(long, default_value_t = 10.0)]
    pub rate: f64,
    /// Concurrent HTTP publishers sharing the rate.
    #[arg(long, default_value_t = 2)]
    pub publishers: usize,
    /// Size in bytes of each publication's data (at least the stamp).
    #[arg(long, default_value_t = 100)]
    pub payload: usize,
    /// Start the load (its warm-up) at this Unix time in milliseconds, not
    /// once connected: processes given the same time measure the same
    /// window (fails if connecting took longer).
    #[arg(long)]
    pub start_at: Option<u64>,
}

#[derive(Args)]
pub struct DurablePublishArgs {
    #[command(flatten)]
    pub common: Common,
    #[command(flatten)]
    pub timing: Timing,
    /// Channels are `<prefix>-0` … `<prefix>-<channels-1>`; the namespace
    /// (before `:`) decides the history storage.
    #[arg(long, default_value = "durable:bench")]
    pub channel_prefix: String,
    #[arg(long, default_value_t = 8)]
    pub channels: usize,
    /// Publisher connections; publisher i publishes into channel i mod channels.
    #[arg(long, default_value_t = 32)]
    pub publishers: usize,
    /// Size in bytes of each publication's data (a JSON object with a padded string).
    #[arg(long, default_value_t = 200)]
    pub payload: usize,
}

#[derive(Clone, Copy, clap::ValueEnum)]
pub enum ApiTransport {
    Http,
    Grpc,
}

#[derive(Args)]
pub struct ApiPublishArgs {
    #[command(flatten)]
    pub common: Common,
    #[command(flatten)]
    pub timing: Timing,
    #[arg(long, value_enum, default_value_t = ApiTransport::Http)]
    pub transport: ApiTransport,
    /// The HTTP API's base URL (methods at `<url>/<method>`).
    #[arg(long, default_value = "http://127.0.0.1:8000/api")]
    pub api_url: String,
    /// The gRPC API's address.
    #[arg(long, default_value = "127.0.0.1:10000")]
    pub grpc_addr: String,
    /// Channels are `<prefix>-0` … `<prefix>-<channels-1>`; the namespace
    /// (before `:`) decides whether they keep history.
    #[arg(long, default_value = "bench")]
    pub channel_prefix: String,
    #[arg(long, default_value_t = 8)]
    pub channels: usize,
    /// Calls in flight at once (each caller waits for its reply).
    #[arg(long, default_value_t = 32)]
    pub concurrency: usize,
    /// Size in bytes of each publication's data.
    #[arg(long, default_value_t = 200)]
    pub payload: usize,
    /// PID of the server process, to read its CPU time from /proc.
    #[arg(long)]
    pub server_pid: Option<u32>,
    /// The API key: `http_api.key` (sent as X-API-Key) or `grpc_api.key`
    /// (metadata `authorization: apikey …`); none for a server without one.
    #[arg(long)]
    pub api_key: Option<String>,
}

#[derive(Args)]
pub struct FanoutArgs {
    #[command(flatten)]
    pub common: Common,
    #[command(flatten)]
    pub reach: Reach,
    #[command(flatten)]
    pub timing: Timing,
    #[command(flatten)]
    pub many: Many,
    #[command(flatten)]
    pub publishing: Publishing,
    #[arg(long, default_value = "bench")]
    pub channel: String,
    #[arg(long, default_value_t = 100)]
    pub subscribers: usize,
    /// Another node of the same cluster (repeatable): subscribers are spread
    /// evenly over --url and these nodes; publications go through --url.
    #[arg(long = "also-url")]
    pub also_url: Vec<String>,
    /// Only subscribe and read, publishing nothing: another herald-bench
    /// process publishes at --rate, both given the same --start-at (to hold
    /// more subscribers than one process may open files for). Latency is
    /// measured across the processes (stamps are Unix time).
    #[arg(long, requires = "start_at")]
    pub listen_only: bool,
}

#[derive(Args)]
pub struct IdleArgs {
    #[command(flatten)]
    pub common: Common,
    #[command(flatten)]
    pub reach: Reach,
    #[command(flatten)]
    pub many: Many,
    #[arg(long, default_value_t = 1000)]
    pub connections: usize,
    /// Connection i subscribes to `<prefix>.<i>`.
    #[arg(long, default_value = "idle")]
    pub channel_prefix: String,
    /// Share K channels (connection i subscribes to `<prefix>.<i mod K>`);
    /// 0 gives every connection its own.
    #[arg(long, default_value_t = 0)]
    pub channels: usize,
    /// Wait after connecting before the first memory reading.
    #[arg(long, default_value = "5s", value_parser = parse_duration)]
    pub settle: Duration,
    /// Then hold the connections this long before the second reading.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    pub hold: Duration,
}

#[derive(Args)]
pub struct ManyChannelsArgs {
    #[command(flatten)]
    pub common: Common,
    #[command(flatten)]
    pub timing: Timing,
    #[command(flatten)]
    pub many: Many,
    #[command(flatten)]
    pub publishing: Publishing,
    #[arg(long, default_value_t = 1000)]
    pub connections: usize,
    /// Connections per group channel.
    #[arg(long, default_value_t = 10)]
    pub group_size: usize,
    /// Share of publications sent to a group channel (else personal).
    #[arg(long, default_value_t = 0.5)]
    pub group_ratio: f64,
    /// Channel names start with this (e.g. `ns:`).
    #[arg(long, default_value = "")]
    pub channel_prefix: String,
}

#[derive(Args)]
pub struct ChatArgs {
    #[command(flatten)]
    pub common: Common,
    #[command(flatten)]
    pub timing: Timing,
    #[command(flatten)]
    pub many: Many,
    #[arg(long, default_value_t = 1000)]
    pub connections: usize,
    /// Fewest members of a room (the last room may have fewer).
    #[arg(long, default_value_t = 10)]
    pub room_min: usize,
    /// Most members of a room.
    #[arg(long, default_value_t = 50)]
    pub room_max: usize,
    /// Messages per second, all rooms together, each from a random member.
    #[arg(long, default_value_t = 100.0)]
    pub rate: f64,
    /// Members leaving their room and joining it again, per second (0: none).
    #[arg(long, default_value_t = 10.0)]
    pub rejoin_rate: f64,
    /// Publications a rejoining member reads from the room's history.
    #[arg(long, default_value_t = 20)]
    pub history_limit: u32,
    /// Size in bytes of each message's data (at least the stamp).
    #[arg(long, default_value_t = 100)]
    pub payload: usize,
    /// Rooms are `<prefix>room.<k>`; the namespace (before `:`) decides
    /// presence, join/leave and history.
    #[arg(long, default_value = "chat:")]
    pub channel_prefix: String,
}

#[derive(Args)]
pub struct ConnectStormArgs {
    #[command(flatten)]
    pub common: Common,
    /// PID of the server process, to read its CPU time from /proc.
    #[arg(long)]
    pub server_pid: Option<u32>,
    /// Bind connections round robin to 127.0.0.1 … 127.0.0.K.
    #[arg(long)]
    pub source_ips: Option<usize>,
    #[arg(long, default_value_t = 1000)]
    pub clients: usize,
    /// Connections being opened at once.
    #[arg(long, default_value_t = 200)]
    pub concurrency: usize,
    /// Client i subscribes to `<prefix>.<i>`.
    #[arg(long, default_value = "storm")]
    pub channel_prefix: String,
}

impl Timing {
    pub fn total(&self) -> Duration {
        self.warmup + self.duration
    }
}

impl Common {
    pub fn target(&self) -> anyhow::Result<Target> {
        Ok(Target::parse(&self.url)?.with_protocol(self.protocol))
    }

    pub fn auth(&self) -> Auth {
        match (&self.token, &self.hmac_secret) {
            (Some(t), _) => Auth::Token(t.clone()),
            (None, Some(s)) => Auth::Hmac(s.clone()),
            (None, None) => Auth::None,
        }
    }
}

/// How a scenario's connections reach the server (fanout, idle).
#[derive(Args)]
pub struct Reach {
    /// The WebSocket at --url, or an emulated transport on the same host
    /// and port (JSON only).
    #[arg(long, value_enum, default_value_t = Transport::WebSocket)]
    pub transport: Transport,
    /// Offer WebSocket permessage-deflate (the server must agree:
    /// `websocket.compression`).
    #[arg(long)]
    pub compression: bool,
}

impl Reach {
    /// `url` spoken to as `common` and this say.
    pub fn target(&self, common: &Common, url: &str) -> anyhow::Result<Target> {
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
    pub fn load(self, timing: &Timing, many: &Many, progress: bool) -> Load {
        Load {
            api_key: self.api_key,
            publish_url: self.publish_url,
            rate: self.rate,
            publishers: self.publishers,
            payload: self.payload,
            duration: timing.duration,
            warmup: timing.warmup,
            start_at: self
                .start_at
                .map(|ms| std::time::UNIX_EPOCH + Duration::from_millis(ms)),
            listen_only: false,
            progress,
            server_pids: many.server_pid.clone(),
            source_ips: many.source_ips,
            connect_concurrency: many.connect_concurrency,
        }
    }
}

pub fn parse_duration(s: &str) -> Result<Duration, String> {
    if let Ok(secs) = s.parse::<f64>() {
        return Duration::try_from_secs_f64(secs).map_err(|e| e.to_string());
    }
    humantime::parse_duration(s).map_err(|e| e.to_string())
}
