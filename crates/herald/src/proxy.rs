//! Calls to the application's backend: the proxies of `client.proxy`,
//! `channel.proxy`, `rpc.proxy` and the `proxies` list, over HTTP (a JSON
//! POST, connections kept alive and reused) or gRPC (Centrifugo's
//! `CentrifugoProxy` service over one HTTP/2 connection). The messages are
//! the ones generated from `proto/proxy.proto`; the session builds requests
//! and acts on the answers.

mod grpc;
mod http;
pub mod raw_json;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use bytes::Bytes;
use herald_protocol::{Disconnect, ProtocolError};
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::config::proxy::{Proxy, DEFAULT_NAME};
use crate::config::Config;

/// The proxy protocol's messages (and, for tests and example backends, its
/// service).
pub mod pb {
    tonic::include_proto!("centrifugal.centrifugo.proxy");
}

/// The calls Herald makes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Call {
    Connect,
    Refresh,
    Subscribe,
    Publish,
    Rpc,
    SubRefresh,
}

impl Call {
    pub fn name(self) -> &'static str {
        match self {
            Call::Connect => "connect",
            Call::Refresh => "refresh",
            Call::Subscribe => "subscribe",
            Call::Publish => "publish",
            Call::Rpc => "rpc",
            Call::SubRefresh => "sub_refresh",
        }
    }

    fn grpc_path(self) -> &'static str {
        match self {
            Call::Connect => "/centrifugal.centrifugo.proxy.CentrifugoProxy/Connect",
            Call::Refresh => "/centrifugal.centrifugo.proxy.CentrifugoProxy/Refresh",
            Call::Subscribe => "/centrifugal.centrifugo.proxy.CentrifugoProxy/Subscribe",
            Call::Publish => "/centrifugal.centrifugo.proxy.CentrifugoProxy/Publish",
            Call::Rpc => "/centrifugal.centrifugo.proxy.CentrifugoProxy/RPC",
            Call::SubRefresh => "/centrifugal.centrifugo.proxy.CentrifugoProxy/SubRefresh",
        }
    }
}

/// Why a call gave no answer to act on.
#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    #[error("backend not reached: {0}")]
    Unreachable(String),
    #[error("backend answered HTTP status {0}")]
    Status(u16),
    #[error("no answer within {0:?}")]
    Timeout(Duration),
    #[error("answer larger than {0} bytes")]
    TooLarge(usize),
    #[error("answer not understood: {0}")]
    Garbage(String),
    #[error("backend answered gRPC status {0}")]
    Grpc(String),
}

/// What the backend (or a status transform) tells the client instead of a
/// result.
#[derive(Debug, Clone, PartialEq)]
pub enum Refusal {
    Error(ProtocolError),
    Disconnect(Disconnect),
}

impl Refusal {
    fn error(e: &pb::Error) -> Self {
        Refusal::Error(ProtocolError::custom(e.code, &e.message, e.temporary))
    }

    /// A disconnect code that applications may not use closes as an
    /// internal error.
    fn disconnect(d: &pb::Disconnect) -> Self {
        Refusal::Disconnect(
            Disconnect::custom(d.code, &d.reason).unwrap_or_else(Disconnect::internal),
        )
    }
}

/// An answer message: a result, or an error, or a disconnect.
pub trait Reply: Answer {
    type Result: Default;
    fn into_parts(
        self,
    ) -> (
        Option<Self::Result>,
        Option<pb::Error>,
        Option<pb::Disconnect>,
    );

    /// The result (`None` when the backend gave none), or what the client
    /// is told instead (a disconnect before an error).
    fn decide(self) -> Result<Option<Self::Result>, Refusal> {
        match self.into_parts() {
            (_, _, Some(d)) => Err(Refusal::disconnect(&d)),
            (_, Some(e), None) => Err(Refusal::error(&e)),
            (result, None, None) => Ok(result),
        }
    }
}

macro_rules! replies {
    ($($t:ty => $r:ty),*) => {$(
        impl Reply for $t {
            type Result = $r;
            fn into_parts(self) -> (Option<$r>, Option<pb::Error>, Option<pb::Disconnect>) {
                (self.result, self.error, self.disconnect)
            }
        }
    )*};
}

replies!(
    pb::ConnectResponse => pb::ConnectResult,
    pb::RefreshResponse => pb::RefreshResult,
    pb::SubscribeResponse => pb::SubscribeResult,
    pb::PublishResponse => pb::PublishResult,
    pb::RpcResponse => pb::RpcResult,
    pb::SubRefreshResponse => pb::SubRefreshResult
);

/// What the client's connection brings to a call: its transport's headers
/// (those some proxy passes on) and the SDK's emulated ones.
#[derive(Debug, Default, Clone, Copy)]
pub struct Origin<'a> {
    pub headers: &'a [(String, String)],
    pub emulated: &'a [(String, String)],
}

/// The fields every request starts with.
#[derive(Debug, Clone, Copy)]
pub struct Base<'a> {
    pub client: &'a str,
    pub transport: &'a str,
    pub protocol: &'a str,
}

/// A request message: the common fields are set by [`Endpoint::call`].
pub trait Request: Serialize + prost::Message + Clone + Send + Sync + 'static {
    fn set_base(&mut self, base: Base<'_>, encoding: &str);
}

macro_rules! requests {
    ($($t:ty),*) => {$(
        impl Request for $t {
            fn set_base(&mut self, base: Base<'_>, encoding: &str) {
                self.client = base.client.to_string();
                self.transport = base.transport.to_string();
                self.protocol = base.protocol.to_string();
                self.encoding = encoding.to_string();
            }
        }
    )*};
}

requests!(
    pb::ConnectRequest,
    pb::RefreshRequest,
    pb::SubscribeRequest,
    pb::PublishRequest,
    pb::RpcRequest,
    pb::SubRefreshRequest
);

/// An answer message.
pub trait Answer: DeserializeOwned + prost::Message + Default + Send + 'static {}
impl<T: DeserializeOwned + prost::Message + Default + Send + 'static> Answer for T {}

enum Transport {
    Http(Box<http::Caller>),
    Grpc(grpc::Caller),
}

/// One configured proxy, ready to call.
pub struct Endpoint {
    /// Its name in logs: `default` or the `proxies` entry's.
    pub name: String,
    config: Proxy,
    transport: Transport,
}

impl Endpoint {
    fn open(name: &str, config: &Proxy) -> Result<Arc<Self>, String> {
        let transport = if config.is_grpc() {
            Transport::Grpc(grpc::Caller::open(config)?)
        } else {
            Transport::Http(Box::new(http::Caller::open(config)?))
        };
        Ok(Arc::new(Self {
            name: name.to_string(),
            config: config.clone(),
            transport,
        }))
    }

    /// Sends the connection's `meta` with calls other than connect.
    pub fn include_meta(&self) -> bool {
        self.config.include_connection_meta
    }

    /// A payload for a request: `data` as it is, or base64 in `b64data`
    /// when the proxy sets `binary_encoding`.
    pub fn payload(&self, data: &[u8]) -> (Vec<u8>, String) {
        if self.config.binary_encoding {
            (
                Vec::new(),
                base64::engine::general_purpose::STANDARD.encode(data),
            )
        } else {
            (data.to_vec(), String::new())
        }
    }

    /// Sends `request` and waits for the answer, at most the proxy's
    /// `timeout`.
    pub async fn call<Req: Request, Resp: Answer>(
        &self,
        call: Call,
        base: Base<'_>,
        mut request: Req,
        origin: Origin<'_>,
    ) -> Result<Resp, ProxyError> {
        let encoding = if self.config.binary_encoding {
            "binary"
        } else {
            "json"
        };
        request.set_base(base, encoding);
        let headers = self.passed_headers(origin);
        let timeout = self.config.timeout.0;
        let answer = match &self.transport {
            Transport::Http(c) => {
                tokio::time::timeout(timeout, c.call(&self.config, &request, &headers)).await
            }
            Transport::Grpc(c) => {
                tokio::time::timeout(timeout, c.call(&self.config, call, request, &headers)).await
            }
        };
        answer.unwrap_or(Err(ProxyError::Timeout(timeout)))
    }

    /// What a failed call tells the client when `status_to_code_transforms`
    /// names the backend's HTTP status.
    pub fn transform(&self, e: &ProxyError) -> Option<Refusal> {
        let ProxyError::Status(status) = e else {
            return None;
        };
        let t = self
            .config
            .http
            .status_to_code_transforms
            .iter()
            .find(|t| t.status_code == *status)?;
        let (e, d) = (&t.to_error, &t.to_disconnect);
        if e.code > 0 {
            return Some(Refusal::error(&pb::Error {
                code: e.code,
                message: e.message.clone(),
                temporary: e.temporary,
            }));
        }
        (d.code > 0).then(|| {
            Refusal::disconnect(&pb::Disconnect {
                code: d.code,
                reason: d.reason.clone(),
            })
        })
    }

    /// The client's headers this proxy passes on: emulated ones it lists in
    /// `emulated_headers`, then transport ones it lists in `http_headers`
    /// (which win).
    fn passed_headers(&self, origin: Origin<'_>) -> Vec<(String, String)> {
        let listed =
            |list: &[String], name: &str| list.iter().any(|l| l.eq_ignore_ascii_case(name));
        let mut out: Vec<(String, String)> = Vec::new();
        for (name, value) in origin.emulated {
            if listed(&self.config.emulated_headers, name) {
                out.push((name.to_ascii_lowercase(), value.clone()));
            }
        }
        for (name, value) in origin.headers {
            if listed(&self.config.http_headers, name) {
                out.retain(|(n, _)| !n.eq_ignore_ascii_case(name));
                out.push((name.to_ascii_lowercase(), value.clone()));
            }
        }
        out
    }
}

/// A JSON payload from an answer: `b64` decoded when set, else `raw`;
/// `None` when both are empty. Channels and replies carry JSON, so a
/// payload that is not JSON is refused.
pub fn json_payload(raw: Vec<u8>, b64: &str) -> Result<Option<Bytes>, &'static str> {
    let bytes = if b64.is_empty() {
        raw
    } else {
        base64::engine::general_purpose::STANDARD
            .decode(b64)
            .map_err(|_| "a b64 field is not base64")?
    };
    if bytes.is_empty() {
        return Ok(None);
    }
    serde_json::from_slice::<serde::de::IgnoredAny>(&bytes).map_err(|_| "a payload is not JSON")?;
    Ok(Some(Bytes::from(bytes)))
}

/// Every proxy of the configuration, opened once at start.
pub struct Proxies {
    connect: Option<Arc<Endpoint>>,
    refresh: Option<Arc<Endpoint>>,
    subscribe: Option<Arc<Endpoint>>,
    publish: Option<Arc<Endpoint>>,
    sub_refresh: Option<Arc<Endpoint>>,
    rpc: Option<Arc<Endpoint>>,
    named: HashMap<String, Arc<Endpoint>>,
    /// Transport headers some proxy passes on (lower case).
    header_names: Vec<String>,
    /// Whether some proxy passes on emulated headers.
    emulated: bool,
    rpc_enabled: bool,
}

/// The channel events a namespace may proxy.
#[derive(Debug, Clone, Copy)]
pub enum ChannelEvent {
    Subscribe,
    Publish,
    SubRefresh,
}

impl Proxies {
    /// Opens every configured proxy (gRPC connections are made on first
    /// use). Must run inside the runtime.
    pub fn open(config: &Config) -> Result<Self, String> {
        let open = |name: &str, p: &Proxy| -> Result<Option<Arc<Endpoint>>, String> {
            if p.endpoint.is_empty() {
                return Ok(None);
            }
            Endpoint::open(name, p)
                .map(Some)
                .map_err(|e| format!("proxy {name} ({}): {e}", p.endpoint))
        };
        let client = &config.client.proxy;
        let switched = |s: &crate::config::proxy::SwitchedProxy, name| {
            if s.enabled {
                open(name, &s.proxy)
            } else {
                Ok(None)
            }
        };
        let channel = &config.channel.proxy;
        let mut named = HashMap::new();
        for p in &config.proxies {
            if let Some(e) = open(&p.name, &p.proxy)? {
                named.insert(p.name.clone(), e);
            }
        }
        let mut all: Vec<&Proxy> = vec![
            &channel.subscribe,
            &channel.publish,
            &channel.sub_refresh,
            &config.rpc.proxy,
        ];
        if client.connect.enabled {
            all.push(&client.connect.proxy);
        }
        if client.refresh.enabled {
            all.push(&client.refresh.proxy);
        }
        all.extend(config.proxies.iter().map(|p| &p.proxy));
        let all: Vec<&Proxy> = all.into_iter().filter(|p| !p.endpoint.is_empty()).collect();
        let mut header_names: Vec<String> = all
            .iter()
            .flat_map(|p| p.http_headers.iter().map(|h| h.to_ascii_lowercase()))
            .collect();
        header_names.sort();
        header_names.dedup();
        Ok(Self {
            connect: switched(&client.connect, "connect")?,
            refresh: switched(&client.refresh, "refresh")?,
            subscribe: open(DEFAULT_NAME, &channel.subscribe)?,
            publish: open(DEFAULT_NAME, &channel.publish)?,
            sub_refresh: open(DEFAULT_NAME, &channel.sub_refresh)?,
            rpc: open(DEFAULT_NAME, &config.rpc.proxy)?,
            emulated: all.iter().any(|p| !p.emulated_headers.is_empty()),
            rpc_enabled: config.rpc.without_namespace.proxy_enabled
                || config
                    .rpc
                    .namespaces
                    .iter()
                    .any(|n| n.options.proxy_enabled),
            named,
            header_names,
        })
    }

    pub fn connect(&self) -> Option<&Arc<Endpoint>> {
        self.connect.as_ref()
    }

    /// The refresh proxy: when set, the server refreshes expiring
    /// connections itself and clients are never asked to.
    pub fn refresh(&self) -> Option<&Arc<Endpoint>> {
        self.refresh.as_ref()
    }

    /// The proxy a namespace names for a channel event.
    pub fn channel(&self, event: ChannelEvent, name: &str) -> Option<&Arc<Endpoint>> {
        let default = match event {
            ChannelEvent::Subscribe => &self.subscribe,
            ChannelEvent::Publish => &self.publish,
            ChannelEvent::SubRefresh => &self.sub_refresh,
        };
        self.named_or(default, name)
    }

    /// The RPC proxy of that name.
    pub fn rpc(&self, name: &str) -> Option<&Arc<Endpoint>> {
        self.named_or(&self.rpc, name)
    }

    /// `default` (or no name) is the kind's own proxy, else one of
    /// `proxies`.
    fn named_or<'a>(
        &'a self,
        default: &'a Option<Arc<Endpoint>>,
        name: &str,
    ) -> Option<&'a Arc<Endpoint>> {
        if name.is_empty() || name == DEFAULT_NAME {
            default.as_ref()
        } else {
            self.named.get(name)
        }
    }

    /// Whether some RPC namespace is proxied (else every RPC method is
    /// unknown: error 104).
    pub fn serves_rpc(&self) -> bool {
        self.rpc_enabled
    }

    /// The transport headers worth keeping for a connection's calls.
    pub fn header_names(&self) -> &[String] {
        &self.header_names
    }

    /// Whether a connection's emulated headers are worth keeping.
    pub fn keeps_emulated(&self) -> bool {
        self.emulated
    }
}
