//! Server configuration, in the structure and with the option names of
//! Centrifugo v6 so that an existing Centrifugo file works for every feature
//! Herald implements. Sources, in rising priority: defaults, a JSON, YAML or
//! TOML file, `HERALD_*` environment variables, CLI flags ([`load`]).

mod admin;
mod channel;
mod cluster;
mod duration;
mod load;
pub mod proxy;
pub mod pusher;
mod secret;
mod tls;
mod token;
mod validate;
pub mod webhook;

use serde::{Deserialize, Serialize};

pub use admin::Admin;
pub use channel::{ChannelConfig, ChannelOptions, HistoryStorage, Namespace, FOSSIL, PUSH_ROOM};
pub use cluster::{
    BrokerConfig, BrokerKind, BrokerType, Engine, EngineKind, NatsConfig, PresenceKind,
    PresenceManagerConfig, RedisConfig,
};
pub use duration::Dur;
pub use load::{load, ConfigError, Loaded, Overrides};
pub use proxy::{ClientProxies, NamedProxy, Proxy, RpcConfig};
pub use secret::{redacted_url, Secret};
pub use tls::{TlsConfig, TlsFiles};
pub use token::{SubscriptionTokenConfig, TokenConfig, TokenKeys};

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct Config {
    pub http_server: HttpServer,
    pub log: Log,
    pub client: ClientConfig,
    pub channel: ChannelConfig,
    pub http_api: HttpApi,
    pub grpc_api: GrpcApi,
    pub websocket: Websocket,
    /// The unidirectional WebSocket transport.
    pub uni_websocket: UniWebsocket,
    /// The unidirectional HTTP-streaming transport.
    pub uni_http_stream: UniHttp,
    /// The unidirectional Server-Sent Events transport.
    pub uni_sse: UniHttp,
    /// The bidirectional HTTP-streaming transport (commands after connect
    /// come through `emulation`).
    pub http_stream: UniHttp,
    /// The bidirectional Server-Sent Events transport (commands after
    /// connect come through `emulation`).
    pub sse: UniHttp,
    /// Where clients of `http_stream` and `sse` post their commands; served
    /// when either is enabled.
    pub emulation: Emulation,
    /// The unidirectional gRPC transport, on a port of its own.
    pub uni_grpc: UniGrpc,
    pub admin: Admin,
    pub health: Health,
    /// `/metrics` in Prometheus's (OpenMetrics) text format.
    pub prometheus: Prometheus,
    /// The HTTP server API described as OpenAPI, with Swagger UI.
    pub swagger: Swagger,
    pub engine: Engine,
    /// Overrides the engine's broker (e.g. NATS beside a Redis engine).
    pub broker: BrokerConfig,
    /// Overrides the engine's presence manager.
    pub presence_manager: PresenceManagerConfig,
    pub node: Node,
    pub shutdown: Shutdown,
    /// Herald: the SQL database behind durable streams (and persisted
    /// access rules).
    pub storage: Storage,
    /// Where user blocks are kept (Centrifugo PRO's key).
    pub user_block: AccessStorage,
    /// Where revoked token ids are kept.
    pub token_revoke: AccessStorage,
    /// Where user token invalidations are kept.
    pub user_tokens_invalidate: AccessStorage,
    /// Named proxies, chosen by namespaces with their `*_proxy_name` keys.
    pub proxies: Vec<NamedProxy>,
    /// Client RPC calls and the proxies that answer them.
    pub rpc: RpcConfig,
    /// Herald: durable webhooks (events kept in `storage` until delivered).
    pub webhooks: Vec<webhook::Webhook>,
    /// Herald: apps speaking the Pusher Channels protocol.
    pub pusher: pusher::PusherConfig,
    /// Herald: where embedded storage lives (`--data-dir`).
    pub data_dir: String,
    /// `serve --dev`: set by the flag only, never by a file.
    #[serde(skip)]
    pub dev: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct HttpServer {
    pub address: String,
    pub port: u16,
    /// Herald: time a client has to send its request headers (a WebSocket
    /// handshake included), counted from accept for a connection's first
    /// request; slower connections are closed.
    pub header_read_timeout: Dur,
    /// Herald: time a client has to send a whole request body (server
    /// API); slower requests get HTTP 408.
    pub request_body_timeout: Dur,
    /// TLS for the listener (WebSocket and HTTP), reloaded on SIGHUP.
    pub tls: TlsConfig,
    /// With `internal_port` set, `/health` and `/metrics` are served only
    /// on this second, plain-HTTP listener (address: `address` when empty).
    pub internal_address: String,
    /// A port number as text, as in Centrifugo (`"0"` picks a free one);
    /// empty: no internal listener.
    pub internal_port: String,
}

impl HttpServer {
    /// The internal listener's address, when one is configured.
    pub fn internal(&self) -> Option<String> {
        if self.internal_port.is_empty() {
            return None;
        }
        let host = [&self.internal_address, &self.address]
            .into_iter()
            .find(|a| !a.is_empty())
            .map_or("0.0.0.0", |a| a.as_str());
        Some(format!("{host}:{}", self.internal_port))
    }
}

impl Default for HttpServer {
    fn default() -> Self {
        Self {
            internal_address: String::new(),
            internal_port: String::new(),
            address: String::new(),
            port: 8000,
            header_read_timeout: Dur::secs(10),
            request_body_timeout: Dur::secs(10),
            tls: TlsConfig::default(),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct Log {
    /// `trace`, `debug`, `info`, `warn`, `error` or `none`.
    pub level: String,
    /// Herald: `text` (default) or `json` lines.
    pub format: String,
}

impl Default for Log {
    fn default() -> Self {
        Self {
            level: "info".into(),
            format: "text".into(),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct ClientConfig {
    /// The connect and refresh proxies.
    pub proxy: ClientProxies,
    /// Origins allowed to open connections (`*` and `*.example.com` style
    /// patterns). Empty: only requests without Origin or from the same host.
    pub allowed_origins: Vec<String>,
    pub token: TokenConfig,
    pub subscription_token: SubscriptionTokenConfig,
    pub allow_anonymous_connect_without_token: bool,
    pub disallow_anonymous_connection_tokens: bool,
    /// Development only: no token needed, every channel open to everyone.
    pub insecure: bool,
    /// How often the server pings; a client that does not answer within
    /// `pong_timeout` is disconnected with 3012. Zero disables pings.
    pub ping_interval: Dur,
    pub pong_timeout: Dur,
    /// Grace time after a connection token expires for the client to refresh;
    /// then it is disconnected with 3005.
    pub expired_close_delay: Dur,
    /// The same for subscription tokens; then the subscription ends with 2501.
    pub expired_sub_close_delay: Dur,
    /// Time from the WebSocket upgrade to the connect command; then 3502.
    pub stale_close_delay: Dur,
    /// Subscriptions one connection may hold; beyond it error 106.
    pub channel_limit: usize,
    /// Bytes queued for one connection; a client that lets more pile up is
    /// disconnected with 3008 (slow).
    pub queue_max_size: usize,
    /// Time a connection collects messages before writing them out, so
    /// that many go in one write: less CPU per message for up to this much
    /// more latency. Zero (the default): write at once.
    pub write_delay: Dur,
    /// Herald: with `write_delay` zero, a frame that comes less than this
    /// long after the connection's last write waits for the next frame (at
    /// most 1.25 times as long as it came after the write, never longer
    /// than this), so that frames arriving faster share a write; a quiet
    /// connection writes at once. Zero: every frame is written as it comes.
    pub adaptive_write_delay: Dur,
    /// Connections per node; beyond it new ones get 3504. Zero: unlimited.
    pub connection_limit: usize,
    /// Connections per user per node; beyond it 3504. Zero: unlimited.
    pub user_connection_limit: usize,
    /// New connections this node accepts a second (a burst of as many passes
    /// at once); beyond: HTTP 503. 0: no limit.
    pub connection_rate_limit: u32,
    /// Herald: new connections one remote address may open a second; beyond:
    /// HTTP 429. 0: no limit (set 0, or raise it, when clients come through
    /// a proxy that hides their addresses).
    pub connection_rate_limit_per_ip: u32,
    /// Herald: commands of each kind one connection may send a second;
    /// beyond: error 111 (too many requests). 0: no limit.
    pub command_rate_limit: CommandRates,
    pub connect_include_server_time: bool,
    /// Subscribe every connection with a user to that user's personal
    /// channel, server-side.
    pub subscribe_to_user_personal_channel: PersonalChannel,
    /// Most publications one client history call returns; zero: no cap.
    pub history_max_publication_limit: usize,
    /// Most publications a subscribe recovers; more missed means
    /// `recovered: false`. Zero: no cap.
    pub recovery_max_publication_limit: usize,
}

impl ClientConfig {
    /// `history_max_publication_limit` as a cap (`None`: no cap).
    pub fn history_limit(&self) -> Option<usize> {
        cap(self.history_max_publication_limit)
    }

    /// `recovery_max_publication_limit` as a cap (`None`: no cap).
    pub fn recovery_limit(&self) -> Option<usize> {
        cap(self.recovery_max_publication_limit)
    }
}

/// `client.subscribe_to_user_personal_channel`: the channel
/// `<personal_channel_namespace>:#<user>` (`#<user>` without a namespace),
/// with that namespace's options; with `single_connection`, a user's new
/// connection closes the others (3504).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct PersonalChannel {
    pub enabled: bool,
    pub personal_channel_namespace: String,
    pub single_connection: bool,
}

impl Config {
    /// The personal channel of `user`.
    pub fn personal_channel(&self, user: &str) -> String {
        let ns = &self
            .client
            .subscribe_to_user_personal_channel
            .personal_channel_namespace;
        let ch = &self.channel;
        if ns.is_empty() {
            format!("{}{user}", ch.user_boundary)
        } else {
            format!("{ns}{}{}{user}", ch.namespace_boundary, ch.user_boundary)
        }
    }
}

/// A limit where zero means none, as Centrifugo's publication limits do.
fn cap(limit: usize) -> Option<usize> {
    (limit > 0).then_some(limit)
}

impl Default for ClientConfig {
    fn default() -> Self {
        Self {
            proxy: ClientProxies::default(),
            allowed_origins: Vec::new(),
            token: TokenConfig::default(),
            subscription_token: SubscriptionTokenConfig::default(),
            allow_anonymous_connect_without_token: false,
            disallow_anonymous_connection_tokens: false,
            insecure: false,
            ping_interval: Dur::secs(25),
            pong_timeout: Dur::secs(8),
            expired_close_delay: Dur::secs(25),
            expired_sub_close_delay: Dur::secs(25),
            stale_close_delay: Dur::secs(10),
            channel_limit: 128,
            queue_max_size: 1024 * 1024,
            write_delay: Dur::default(),
            adaptive_write_delay: Dur::millis(8),
            connection_limit: 0,
            user_connection_limit: 0,
            connection_rate_limit: 0,
            connection_rate_limit_per_ip: 1000,
            command_rate_limit: CommandRates::default(),
            connect_include_server_time: false,
            subscribe_to_user_personal_channel: PersonalChannel::default(),
            history_max_publication_limit: 300,
            recovery_max_publication_limit: 300,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct HttpApi {
    pub disabled: bool,
    pub handler_prefix: String,
    pub key: Secret,
    /// No key needed (development, or an API only reachable internally).
    pub insecure: bool,
    /// Herald: largest request body accepted; larger ones get HTTP 413.
    pub max_request_body_size: usize,
    /// How a method's error is answered (see [`ErrorMode`]).
    pub error_mode: ErrorMode,
}

/// Commands a second per connection, by kind (0: no limit).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct CommandRates {
    pub publish: u32,
    /// Subscribe and subscription-token refresh.
    pub subscribe: u32,
    pub history: u32,
    /// Presence and presence stats.
    pub presence: u32,
    pub rpc: u32,
}

/// The gRPC server API (Centrifugo's `CentrifugoApi` service).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct GrpcApi {
    pub enabled: bool,
    /// Listen address; all interfaces when empty.
    pub address: String,
    /// Listen port; 0 picks a free one (the log says which).
    pub port: u16,
    /// When set, calls must carry metadata `authorization: apikey <key>`.
    pub key: Secret,
    /// TLS for the gRPC API.
    pub tls: TlsConfig,
    /// Serve gRPC server reflection (for tools such as grpcurl).
    pub reflection: bool,
    /// Largest request message accepted; 0: 4 MiB, gRPC's default.
    pub max_receive_message_size: usize,
    /// How a method's error is answered: in the reply (`custom`, the
    /// default) or as a gRPC status (`transport`), which a call can also ask
    /// for with metadata `x-centrifugo-error-mode: transport`.
    pub error_mode: ErrorMode,
}

impl Default for GrpcApi {
    fn default() -> Self {
        Self {
            enabled: false,
            address: String::new(),
            port: 10000,
            key: Secret::default(),
            tls: TlsConfig::default(),
            reflection: false,
            max_receive_message_size: 0,
            error_mode: ErrorMode::Custom,
        }
    }
}

/// How the server API answers a method's error: `custom` (the default, also
/// an empty string): HTTP 200 with `{"error":{"code","message"}}`;
/// `transport`: an HTTP status for the code (404, 400, 416, 409 or 500)
/// with `{"code","message"}`, as a request header
/// `X-Centrifugo-Error-Mode: transport` asks for one request.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ErrorMode {
    #[default]
    #[serde(alias = "")]
    Custom,
    Transport,
}

impl Default for HttpApi {
    fn default() -> Self {
        Self {
            disabled: false,
            handler_prefix: "/api".into(),
            key: Secret::default(),
            insecure: false,
            max_request_body_size: 4 * 1024 * 1024,
            error_mode: ErrorMode::Custom,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct Websocket {
    pub disabled: bool,
    pub handler_prefix: String,
    /// Largest message a client may send; a larger one closes the
    /// connection with 1009.
    pub message_size_limit: usize,
    /// Most bytes read from the socket at once (0: 256).
    pub read_buffer_size: usize,
    /// Bytes buffered before a write is flushed (0: 4 KiB).
    pub write_buffer_size: usize,
    /// A write that takes longer closes the connection.
    pub write_timeout: Dur,
    /// permessage-deflate for clients that offer it.
    pub compression: bool,
    /// Messages shorter than this go out uncompressed.
    pub compression_min_size: usize,
    /// zlib level: 0 (none) to 9 (smallest), -1 for zlib's default (6).
    pub compression_level: i32,
}

/// `uni_websocket`: at `handler_prefix`, a client sends its connect request
/// as its first message and then only receives pushes.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct UniWebsocket {
    pub enabled: bool,
    pub handler_prefix: String,
    /// Largest message (the connect request) a client may send.
    pub message_size_limit: usize,
    /// As `websocket.compression*`, for this endpoint.
    pub compression: bool,
    pub compression_min_size: usize,
    pub compression_level: i32,
}

impl Default for UniWebsocket {
    fn default() -> Self {
        Self {
            enabled: false,
            handler_prefix: "/connection/uni_websocket".into(),
            message_size_limit: 65536,
            compression: false,
            compression_min_size: 0,
            compression_level: 1,
        }
    }
}

/// `uni_http_stream`, `uni_sse`, `http_stream` and `sse`: at
/// `handler_prefix` a client posts (or, for SSE, gets with `cf_connect`)
/// its connect request and reads pushes (and, bidirectional, replies) from
/// the response. `handler_prefix` empty: the transport's default path.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct UniHttp {
    pub enabled: bool,
    pub handler_prefix: String,
    /// Largest connect request.
    pub max_request_body_size: usize,
}

impl Default for UniHttp {
    fn default() -> Self {
        Self {
            enabled: false,
            handler_prefix: String::new(),
            max_request_body_size: 65536,
        }
    }
}

/// `uni_grpc`: Centrifugo's `CentrifugoUniStream` service; a client calls
/// `Consume` with its connect request and receives pushes.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct UniGrpc {
    pub enabled: bool,
    /// Listen address; all interfaces when empty.
    pub address: String,
    /// Listen port; 0 picks a free one.
    pub port: u16,
    /// Largest connect request accepted; 0: 4 MiB, gRPC's default.
    pub max_receive_message_size: usize,
    pub tls: TlsConfig,
}

impl Default for UniGrpc {
    fn default() -> Self {
        Self {
            enabled: false,
            address: String::new(),
            port: 11000,
            max_receive_message_size: 0,
            tls: TlsConfig::default(),
        }
    }
}

/// `emulation`: the endpoint of emulated connections' commands.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct Emulation {
    pub handler_prefix: String,
    /// Largest request (commands and their envelope); larger ones get
    /// HTTP 413.
    pub max_request_body_size: usize,
}

impl Default for Emulation {
    fn default() -> Self {
        Self {
            handler_prefix: "/emulation".into(),
            max_request_body_size: 65536,
        }
    }
}

impl UniHttp {
    /// `handler_prefix`, or `default` when it is empty.
    pub fn path<'a>(&'a self, default: &'a str) -> &'a str {
        if self.handler_prefix.is_empty() {
            default
        } else {
            &self.handler_prefix
        }
    }
}

impl Default for Websocket {
    fn default() -> Self {
        Self {
            disabled: false,
            handler_prefix: "/connection/websocket".into(),
            message_size_limit: 65536,
            read_buffer_size: 0,
            write_buffer_size: 0,
            write_timeout: Dur::millis(1000),
            compression: false,
            compression_min_size: 0,
            compression_level: 1,
        }
    }
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct Prometheus {
    pub enabled: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct Health {
    pub enabled: bool,
    pub handler_prefix: String,
}

/// `swagger.enabled`: Swagger UI at `handler_prefix` (`/swagger`), the
/// OpenAPI document at `<handler_prefix>/openapi.json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct Swagger {
    pub enabled: bool,
    pub handler_prefix: String,
}

impl Default for Swagger {
    fn default() -> Self {
        Self {
            enabled: false,
            handler_prefix: "/swagger".into(),
        }
    }
}

impl Default for Health {
    fn default() -> Self {
        Self {
            enabled: true,
            handler_prefix: "/health".into(),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct Node {
    /// Name of this node; host name and port when empty.
    pub name: String,
    /// Herald: how often a node announces itself to the others of its
    /// cluster; a node silent for three intervals leaves `info`.
    pub info_publish_interval: Dur,
}

impl Default for Node {
    fn default() -> Self {
        Self {
            name: String::new(),
            info_publish_interval: Dur::secs(3),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct Shutdown {
    /// Longest time a graceful shutdown waits for connections to close.
    pub timeout: Dur,
}

impl Default for Shutdown {
    fn default() -> Self {
        Self {
            timeout: Dur::secs(30),
        }
    }
}

/// Where one kind of access rule (user blocks, revoked tokens, user token
/// invalidations) is kept.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct AccessStorage {
    pub storage_type: AccessStorageType,
}

impl AccessStorage {
    pub fn persisted(self) -> bool {
        self.storage_type == AccessStorageType::Database
    }
}

/// `memory` (the default: every node keeps the rules it was told of until
/// it stops) or `database` (Herald's durable `storage`: the rules survive
/// restarts and reach nodes that start later).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AccessStorageType {
    #[default]
    #[serde(alias = "")]
    Memory,
    Database,
}

/// The three kinds of access rule and where each is kept.
#[derive(Debug, Clone, Copy, Default)]
pub struct AccessConfig {
    pub user_block: AccessStorage,
    pub token_revoke: AccessStorage,
    pub user_tokens_invalidate: AccessStorage,
}

impl AccessConfig {
    pub fn any_persisted(&self) -> bool {
        self.user_block.persisted()
            || self.token_revoke.persisted()
            || self.user_tokens_invalidate.persisted()
    }
}

impl Config {
    /// Whether any durable webhook is configured: Herald's own or a
    /// Pusher app's.
    pub fn has_webhooks(&self) -> bool {
        !self.webhooks.is_empty() || self.pusher.apps.iter().any(|a| !a.webhooks.is_empty())
    }

    /// The paths of the streaming transports — `uni_http_stream`,
    /// `uni_sse`, `http_stream`, `sse`, in that order — and of the
    /// emulation endpoint (for the last two), each when enabled.
    pub fn stream_paths(&self) -> [Option<&str>; 5] {
        let [a, b, c, d] = [
            (&self.uni_http_stream, "/connection/uni_http_stream"),
            (&self.uni_sse, "/connection/uni_sse"),
            (&self.http_stream, "/connection/http_stream"),
            (&self.sse, "/connection/sse"),
        ]
        .map(|(t, default)| t.enabled.then(|| t.path(default)));
        let emulation =
            (c.is_some() || d.is_some()).then_some(self.emulation.handler_prefix.as_str());
        [a, b, c, d, emulation]
    }

    pub fn access(&self) -> AccessConfig {
        AccessConfig {
            user_block: self.user_block,
            token_revoke: self.token_revoke,
            user_tokens_invalidate: self.user_tokens_invalidate,
        }
    }
}

/// Herald: where durable streams (namespaces with `history_storage =
/// "durable"`) are kept.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct Storage {
    /// `sqlite` (embedded, in the data directory) or `postgres`.
    #[serde(rename = "type")]
    pub kind: StorageKind,
    pub sqlite: SqliteStorage,
    pub postgres: PostgresStorage,
    /// How often retention (history_size / history_ttl) runs on durable streams.
    pub retention_interval: Dur,
    /// Most publications committed in one group commit.
    pub batch_max_size: usize,
    /// Longest wait for the database: each call, and a durable publish
    /// from its queueing to its commit.
    pub timeout: Dur,
}

impl Default for Storage {
    fn default() -> Self {
        Self {
            kind: StorageKind::Sqlite,
            sqlite: SqliteStorage::default(),
            postgres: PostgresStorage::default(),
            retention_interval: Dur::secs(60),
            batch_max_size: 1000,
            timeout: Dur::secs(10),
        }
    }
}

/// The SQL database durable streams live in. Adding one is a variant here,
/// its settings beside `sqlite` and `postgres`, and its dialect file
/// (see `store::sql`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StorageKind {
    #[default]
    Sqlite,
    Postgres,
}

/// When SQLite's commits reach the disk (see `storage.sqlite.synchronous`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Synchronous {
    #[default]
    Full,
    Normal,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct SqliteStorage {
    /// Database file; `<data_dir>/streams.db` when empty.
    pub path: String,
    /// `full`: each group commit is fsynced before publishers are
    /// acknowledged, so acknowledged publications survive power loss.
    /// `normal`: they survive a crash of the process but not of the OS;
    /// faster.
    pub synchronous: Synchronous,
}

impl Default for SqliteStorage {
    fn default() -> Self {
        Self {
            path: String::new(),
            synchronous: Synchronous::Full,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct PostgresStorage {
    /// Connection URL, e.g. `postgres://user:pass@127.0.0.1:5432/herald`.
    pub url: Secret,
    /// Connections in the pool.
    pub pool_size: u32,
}

impl Default for PostgresStorage {
    fn default() -> Self {
        Self {
            url: Secret::default(),
            pool_size: 8,
        }
    }
}
