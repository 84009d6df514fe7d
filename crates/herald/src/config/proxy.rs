//! Proxies to the application's backend, with Centrifugo v6's keys:
//! `client.proxy.connect` / `client.proxy.refresh`, `channel.proxy.subscribe`
//! / `publish` / `sub_refresh` (each the proxy named `default` of its kind),
//! `rpc.proxy`, and the named proxies of the top-level `proxies` list that
//! namespaces choose with their `*_proxy_name` keys.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::Dur;

/// Where and how one proxy calls the backend: an `http://` / `https://`
/// endpoint takes a JSON POST, a `grpc://` one a call of the
/// `CentrifugoProxy` service.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Proxy {
    pub endpoint: String,
    /// Longest wait for the backend's answer.
    pub timeout: Dur,
    /// Headers of the client's HTTP request (the WebSocket upgrade, or the
    /// HTTP-streaming request) passed on to the backend, by name
    /// (case-insensitive).
    pub http_headers: Vec<String>,
    /// gRPC metadata of a client connection passed on; Herald's client
    /// transports are all HTTP, so this only names what a backend may
    /// receive once a gRPC transport exists.
    pub grpc_metadata: Vec<String>,
    /// Headers the SDK sends inside its connect command (`headers`) passed
    /// on, by name. The client chooses them: pass only what the backend
    /// checks itself.
    pub emulated_headers: Vec<String>,
    /// Payloads travel base64-encoded (`b64data`), for backends of channels
    /// whose data is not JSON.
    pub binary_encoding: bool,
    /// Sends the connection's `meta` (from its token or the connect proxy)
    /// with every call but connect's.
    pub include_connection_meta: bool,
    pub http: ProxyHttp,
    pub grpc: ProxyGrpc,
    /// Herald: the largest answer accepted from the backend; a larger one
    /// is an error like an unreachable backend.
    pub max_response_size: usize,
}

impl Default for Proxy {
    fn default() -> Self {
        Self {
            endpoint: String::new(),
            timeout: Dur::secs(1),
            http_headers: Vec::new(),
            grpc_metadata: Vec::new(),
            emulated_headers: Vec::new(),
            binary_encoding: false,
            include_connection_meta: false,
            http: ProxyHttp::default(),
            grpc: ProxyGrpc::default(),
            max_response_size: 4 << 20,
        }
    }
}

impl Proxy {
    pub fn is_grpc(&self) -> bool {
        self.endpoint.starts_with("grpc://")
    }
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct ProxyHttp {
    /// Headers added to every request (the client's own win).
    pub static_headers: BTreeMap<String, String>,
    /// HTTP statuses of the backend turned into a client error or
    /// disconnect (any other status but 200 is an internal error).
    pub status_to_code_transforms: Vec<StatusTransform>,
    /// Parsed so that a config asking for custom TLS is refused rather
    /// than ignored: https endpoints use the system's root certificates.
    pub tls: ProxyTls,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct ProxyTls {
    pub enabled: bool,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct StatusTransform {
    pub status_code: u16,
    pub to_error: TransformError,
    pub to_disconnect: TransformDisconnect,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct TransformError {
    pub code: u32,
    pub message: String,
    pub temporary: bool,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct TransformDisconnect {
    pub code: u32,
    pub reason: String,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct ProxyGrpc {
    /// A metadata entry added to every call (with `credentials_value`), for
    /// a backend that checks who calls it.
    pub credentials_key: String,
    pub credentials_value: String,
    /// Metadata added to every call (the client's own win).
    pub static_metadata: BTreeMap<String, String>,
    /// Refused when enabled: gRPC proxies are called in plain text.
    pub tls: ProxyTls,
}

/// A proxy of the top-level `proxies` list.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct NamedProxy {
    pub name: String,
    #[serde(flatten)]
    pub proxy: Proxy,
}

/// `client.proxy.connect` and `client.proxy.refresh`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct SwitchedProxy {
    pub enabled: bool,
    #[serde(flatten)]
    pub proxy: Proxy,
}

/// `client.proxy`: who a connection without a token is (connect), and
/// whether an expiring connection may go on (refresh, asked by the server).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct ClientProxies {
    pub connect: SwitchedProxy,
    pub refresh: SwitchedProxy,
}

/// `channel.proxy`: the `default` proxy of each channel event, used by
/// namespaces that switch the event's proxy on without naming another.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct ChannelProxies {
    pub subscribe: Proxy,
    pub publish: Proxy,
    pub sub_refresh: Proxy,
}

/// `rpc`: client RPC calls, routed by method name (`namespace:method`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct RpcConfig {
    /// The `default` RPC proxy.
    pub proxy: Proxy,
    pub without_namespace: RpcOptions,
    pub namespaces: Vec<RpcNamespace>,
    pub namespace_boundary: String,
    /// A method Herald answers itself, with an empty result.
    pub ping: RpcPing,
}

impl Default for RpcConfig {
    fn default() -> Self {
        Self {
            proxy: Proxy::default(),
            without_namespace: RpcOptions::default(),
            namespaces: Vec::new(),
            namespace_boundary: ":".into(),
            ping: RpcPing::default(),
        }
    }
}

impl RpcConfig {
    /// The options of the namespace `method` belongs to; `None` when its
    /// namespace is not configured.
    pub fn options(&self, method: &str) -> Option<&RpcOptions> {
        match method.split_once(self.namespace_boundary.as_str()) {
            Some((ns, _)) if !self.namespace_boundary.is_empty() => self
                .namespaces
                .iter()
                .find(|n| n.name == ns)
                .map(|n| &n.options),
            _ => Some(&self.without_namespace),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct RpcOptions {
    pub proxy_enabled: bool,
    pub proxy_name: String,
}

impl Default for RpcOptions {
    fn default() -> Self {
        Self {
            proxy_enabled: false,
            proxy_name: DEFAULT_NAME.into(),
        }
    }
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct RpcNamespace {
    pub name: String,
    #[serde(flatten)]
    pub options: RpcOptions,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct RpcPing {
    pub enabled: bool,
    pub method: String,
}

impl Default for RpcPing {
    fn default() -> Self {
        Self {
            enabled: false,
            method: "ping".into(),
        }
    }
}

/// The name that means "this kind's own proxy" (`channel.proxy.<kind>`,
/// `rpc.proxy`) rather than one of the `proxies` list.
pub const DEFAULT_NAME: &str = "default";

/// The `*_proxy_name` default.
pub fn default_name() -> String {
    DEFAULT_NAME.into()
}

/// Every proxy in use has an endpoint Herald can call, a positive timeout,
/// and every name a namespace gives exists.
pub fn validate(c: &super::Config) -> Result<(), super::ConfigError> {
    use super::ConfigError;
    let check = |key: &str, p: &Proxy| -> Result<(), ConfigError> {
        let e = &p.endpoint;
        if !(e.starts_with("http://") || e.starts_with("https://") || e.starts_with("grpc://")) {
            return Err(ConfigError::invalid(
                format!("{key}.endpoint"),
                "set an http://, https:// or grpc:// endpoint",
            ));
        }
        if p.timeout.is_zero() {
            return Err(ConfigError::invalid(
                format!("{key}.timeout"),
                "must be positive",
            ));
        }
        if p.http.tls.enabled || p.grpc.tls.enabled {
            let which = if p.http.tls.enabled { "http" } else { "grpc" };
            return Err(ConfigError::invalid(
                format!("{key}.{which}.tls.enabled"),
                "custom TLS for proxies is not supported: https:// endpoints are checked \
                 against the system's root certificates (SSL_CERT_FILE), gRPC proxies are \
                 called in plain text (keep them on a private network)",
            ));
        }
        if p.max_response_size == 0 {
            return Err(ConfigError::invalid(
                format!("{key}.max_response_size"),
                "must be positive",
            ));
        }
        Ok(())
    };
    let client = &c.client.proxy;
    if client.connect.enabled {
        check("client.proxy.connect", &client.connect.proxy)?;
    }
    if client.refresh.enabled {
        check("client.proxy.refresh", &client.refresh.proxy)?;
    }
    let mut names = std::collections::HashSet::new();
    for (i, p) in c.proxies.iter().enumerate() {
        let key = format!("proxies[{i}]");
        if p.name.is_empty() || p.name == DEFAULT_NAME {
            return Err(ConfigError::invalid(
                format!("{key}.name"),
                "give each proxy a name of its own (not empty, not `default`)",
            ));
        }
        if !names.insert(p.name.as_str()) {
            return Err(ConfigError::invalid(
                format!("{key}.name"),
                "names must be unique",
            ));
        }
        check(&key, &p.proxy)?;
    }
    // A name that is used must lead to a proxy.
    let resolve = |key: String, name: &str, default: &Proxy, default_key: &str| {
        if name.is_empty() || name == DEFAULT_NAME {
            if default.endpoint.is_empty() {
                return Err(ConfigError::invalid(
                    key,
                    format!("switched on, but {default_key}.endpoint is not set"),
                ));
            }
            return check(default_key, default);
        }
        if names.contains(name) {
            Ok(())
        } else {
            Err(ConfigError::invalid(
                key,
                format!("no proxy named `{name}` in `proxies`"),
            ))
        }
    };
    let ch = &c.channel;
    let namespaces = std::iter::once((
        "channel.without_namespace".to_string(),
        &ch.without_namespace,
    ))
    .chain(
        ch.namespaces
            .iter()
            .enumerate()
            .map(|(i, n)| (format!("channel.namespaces[{i}]"), &n.options)),
    );
    for (key, o) in namespaces {
        let events = [
            (
                o.subscribe_proxy_enabled,
                "subscribe",
                &o.subscribe_proxy_name,
                &ch.proxy.subscribe,
            ),
            (
                o.publish_proxy_enabled,
                "publish",
                &o.publish_proxy_name,
                &ch.proxy.publish,
            ),
            (
                o.sub_refresh_proxy_enabled,
                "sub_refresh",
                &o.sub_refresh_proxy_name,
                &ch.proxy.sub_refresh,
            ),
        ];
        for (enabled, event, name, default) in events {
            if enabled {
                resolve(
                    format!("{key}.{event}_proxy_enabled"),
                    name,
                    default,
                    &format!("channel.proxy.{event}"),
                )?;
            }
        }
    }
    let rpc = &c.rpc;
    let rpc_namespaces =
        std::iter::once(("rpc.without_namespace".to_string(), &rpc.without_namespace)).chain(
            rpc.namespaces
                .iter()
                .enumerate()
                .map(|(i, n)| (format!("rpc.namespaces[{i}]"), &n.options)),
        );
    for (key, o) in rpc_namespaces {
        if o.proxy_enabled {
            resolve(
                format!("{key}.proxy_enabled"),
                &o.proxy_name,
                &rpc.proxy,
                "rpc.proxy",
            )?;
        }
    }
    Ok(())
}
