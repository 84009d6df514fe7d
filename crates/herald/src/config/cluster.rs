//! How nodes of a cluster find each other: the engine (`memory` for one
//! node, `redis` for broker, presence and memory-history streams in Redis),
//! optionally with a separate broker (`nats` or `redis`) and presence manager
//! (`redis`), in Centrifugo v6's layout.

use serde::{Deserialize, Serialize};

use super::{redacted_url, ChannelOptions, Config, ConfigError, Dur, HistoryStorage, Secret};
use crate::config::StorageKind;

/// What an engine keeps its broker, presence and memory-history streams in.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EngineKind {
    /// This process only: one node.
    #[default]
    Memory,
    Redis,
}

/// A broker that overrides the engine's (`broker.type`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BrokerType {
    Redis,
    Nats,
}

/// A presence manager that overrides the engine's (`presence_manager.type`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PresenceKind {
    Memory,
    Redis,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct Engine {
    /// `memory` (one node) or `redis`.
    #[serde(rename = "type")]
    pub kind: EngineKind,
    pub redis: RedisConfig,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct BrokerConfig {
    pub enabled: bool,
    /// `redis` or `nats`; required when `enabled`.
    #[serde(rename = "type", deserialize_with = "empty_is_none")]
    pub kind: Option<BrokerType>,
    pub redis: RedisConfig,
    pub nats: NatsConfig,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct PresenceManagerConfig {
    pub enabled: bool,
    /// `memory` or `redis`; required when `enabled`.
    #[serde(rename = "type", deserialize_with = "empty_is_none")]
    pub kind: Option<PresenceKind>,
    pub redis: RedisConfig,
}

#[derive(Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct RedisConfig {
    /// `redis://[:password@]host:port[/db]` or `host:port`; several
    /// addresses (a list, or one string separated by spaces or commas)
    /// shard channels across as many Redis servers.
    #[serde(deserialize_with = "one_or_many")]
    pub address: String,
    /// Overrides a password in the address.
    pub password: Secret,
    /// Overrides a database number in the address.
    pub db: Option<i64>,
    /// Prefix of every key and pub/sub channel, so that several clusters
    /// can share one Redis.
    pub prefix: String,
    /// Time to open a connection; a publish waits at most `io_timeout`.
    pub connect_timeout: Dur,
    pub io_timeout: Dur,
    /// How long a presence entry lives without being refreshed by its node.
    pub presence_ttl: Dur,
}

impl Default for RedisConfig {
    fn default() -> Self {
        Self {
            address: "redis://127.0.0.1:6379".into(),
            password: Secret::default(),
            db: None,
            prefix: "herald".into(),
            connect_timeout: Dur::secs(1),
            io_timeout: Dur::secs(4),
            presence_ttl: Dur::secs(60),
        }
    }
}

/// An optional kind where an empty string (an environment variable set to
/// nothing, say) means none, as an absent key does.
fn empty_is_none<'de, D, T>(d: D) -> Result<Option<T>, D::Error>
where
    D: serde::Deserializer<'de>,
    T: serde::de::DeserializeOwned,
{
    match Option::<serde_json::Value>::deserialize(d)? {
        None | Some(serde_json::Value::Null) => Ok(None),
        Some(serde_json::Value::String(s)) if s.is_empty() => Ok(None),
        Some(v) => T::deserialize(v)
            .map(Some)
            .map_err(serde::de::Error::custom),
    }
}

/// Accepts a string or a list of strings; a list is kept space-separated.
fn one_or_many<'de, D: serde::Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum OneOrMany {
        One(String),
        Many(Vec<String>),
    }
    Ok(match OneOrMany::deserialize(d)? {
        OneOrMany::One(s) => s,
        OneOrMany::Many(v) => v.join(" "),
    })
}

impl std::fmt::Debug for RedisConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // An address may hold a password.
        f.debug_struct("RedisConfig")
            .field("address", &redacted_url(&self.address))
            .field("password", &self.password)
            .field("db", &self.db)
            .field("prefix", &self.prefix)
            .field("connect_timeout", &self.connect_timeout)
            .field("io_timeout", &self.io_timeout)
            .field("presence_ttl", &self.presence_ttl)
            .finish()
    }
}

impl RedisConfig {
    /// Every shard's address as a URL with password and database applied.
    pub fn urls(&self) -> Vec<String> {
        self.address
            .split(|c: char| c == ',' || c.is_whitespace())
            .filter(|a| !a.is_empty())
            .map(|a| self.url_of(a))
            .collect()
    }

    fn url_of(&self, address: &str) -> String {
        let mut url = if address.contains("://") {
            address.to_string()
        } else {
            format!("redis://{address}")
        };
        if !self.password.is_empty() {
            if let Some((scheme, rest)) = url.split_once("://") {
                let host = rest.rsplit_once('@').map_or(rest, |(_, h)| h);
                let password = percent_encode(self.password.expose());
                url = format!("{scheme}://:{password}@{host}");
            }
        }
        if let Some(db) = self.db {
            let (base, _) = split_db(&url);
            url = format!("{base}/{db}");
        }
        url
    }
}

/// A URL component with everything but unreserved characters escaped.
fn percent_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Splits `redis://host:port/3` into the part before the database and it.
fn split_db(url: &str) -> (&str, Option<&str>) {
    let after_scheme = url.find("://").map_or(0, |i| i + 3);
    match url[after_scheme..].find('/') {
        Some(i) => (&url[..after_scheme + i], Some(&url[after_scheme + i + 1..])),
        None => (url, None),
    }
}

#[derive(Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct NatsConfig {
    pub url: String,
    /// Prefix of every subject.
    pub prefix: String,
    /// A publish waits at most this long.
    pub io_timeout: Dur,
}

impl std::fmt::Debug for NatsConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NatsConfig")
            .field("url", &redacted_url(&self.url))
            .field("prefix", &self.prefix)
            .field("io_timeout", &self.io_timeout)
            .finish()
    }
}

impl Default for NatsConfig {
    fn default() -> Self {
        Self {
            url: "nats://127.0.0.1:4222".into(),
            prefix: "herald".into(),
            io_timeout: Dur::secs(4),
        }
    }
}

/// What carries publications between nodes: the engine's broker unless
/// `broker` overrides it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BrokerKind {
    Memory,
    Redis,
    Nats,
}

impl Config {
    pub fn broker_kind(&self) -> BrokerKind {
        match (self.broker.enabled, self.broker.kind, self.engine.kind) {
            (true, Some(BrokerType::Redis), _) => BrokerKind::Redis,
            (true, Some(BrokerType::Nats), _) => BrokerKind::Nats,
            (_, _, EngineKind::Redis) => BrokerKind::Redis,
            (_, _, EngineKind::Memory) => BrokerKind::Memory,
        }
    }

    /// The Redis the broker uses.
    pub fn broker_redis(&self) -> &RedisConfig {
        if self.broker.enabled {
            &self.broker.redis
        } else {
            &self.engine.redis
        }
    }

    /// The Redis presence lives in, when it is shared between nodes.
    pub fn presence_redis(&self) -> Option<&RedisConfig> {
        if self.presence_manager.enabled {
            (self.presence_manager.kind == Some(PresenceKind::Redis))
                .then_some(&self.presence_manager.redis)
        } else {
            (self.engine.kind == EngineKind::Redis).then_some(&self.engine.redis)
        }
    }

    /// Whether several nodes may share channels.
    pub fn is_cluster(&self) -> bool {
        self.broker_kind() != BrokerKind::Memory
    }
}

/// Refuses engine, broker and presence combinations that cannot be
/// consistent across nodes, saying why.
pub(super) fn validate_cluster(c: &Config) -> Result<(), ConfigError> {
    if c.broker.enabled && c.broker.kind.is_none() {
        return Err(ConfigError::invalid(
            "broker.type",
            "use \"redis\" or \"nats\"",
        ));
    }
    if c.presence_manager.enabled && c.presence_manager.kind.is_none() {
        return Err(ConfigError::invalid(
            "presence_manager.type",
            "use \"memory\" or \"redis\"",
        ));
    }
    for (key, redis) in [
        ("engine.redis", &c.engine.redis),
        ("broker.redis", &c.broker.redis),
        ("presence_manager.redis", &c.presence_manager.redis),
    ] {
        validate_redis(key, redis)?;
    }
    if c.broker_kind() == BrokerKind::Nats {
        if !c.broker.nats.url.starts_with("nats://") {
            return Err(ConfigError::invalid(
                "broker.nats.url",
                "use nats://host:port",
            ));
        }
        if c.broker.nats.io_timeout.is_zero() {
            return Err(ConfigError::invalid(
                "broker.nats.io_timeout",
                "must be positive",
            ));
        }
        if !subject_token_ok(&c.broker.nats.prefix) {
            return Err(ConfigError::invalid(
                "broker.nats.prefix",
                "use letters, digits, '-' and '_' only",
            ));
        }
    }
    if !c.is_cluster() {
        return Ok(());
    }
    if c.node.info_publish_interval.is_zero() {
        return Err(ConfigError::invalid(
            "node.info_publish_interval",
            "must be positive",
        ));
    }
    if c.has_webhooks() && c.storage.kind != StorageKind::Postgres {
        return Err(ConfigError::invalid(
            "webhooks",
            "webhooks in a cluster need storage.type \"postgres\": every node must see \
             the same events and who is online",
        ));
    }
    for (key, o) in namespaces(c) {
        if o.history_storage == HistoryStorage::Durable && c.storage.kind != StorageKind::Postgres {
            return Err(ConfigError::invalid(
                format!("{key}.history_storage"),
                "durable history in a cluster needs storage.type \"postgres\": \
                 every node must append to the same streams",
            ));
        }
        let memory_history = o.history_size > 0 && o.history_storage == HistoryStorage::Memory;
        if memory_history && c.broker_kind() == BrokerKind::Nats {
            return Err(ConfigError::invalid(
                format!("{key}.history_storage"),
                "NATS carries no history: streams kept in each node's memory would disagree; \
                 use \"durable\" (PostgreSQL) or a Redis broker",
            ));
        }
        if o.presence && c.presence_redis().is_none() {
            return Err(ConfigError::invalid(
                format!("{key}.presence"),
                "presence in a cluster needs a shared presence manager \
                 (engine.type \"redis\" or presence_manager.type \"redis\")",
            ));
        }
    }
    let watching = c.pusher.apps.iter().position(|a| a.enable_watchlist_events);
    if let (Some(i), None) = (watching, c.presence_redis()) {
        return Err(ConfigError::invalid(
            format!("pusher.apps[{i}].enable_watchlist_events"),
            "watchlist events in a cluster need a shared presence manager \
             (engine.type \"redis\" or presence_manager.type \"redis\"): a watcher reads \
             who is online on every node",
        ));
    }
    Ok(())
}

fn validate_redis(key: &str, r: &RedisConfig) -> Result<(), ConfigError> {
    let urls = r.urls();
    if urls.is_empty() {
        return Err(ConfigError::invalid(
            format!("{key}.address"),
            "is required",
        ));
    }
    for url in &urls {
        if !(url.starts_with("redis://") || url.starts_with("rediss://")) {
            return Err(ConfigError::invalid(
                format!("{key}.address"),
                "use redis://host:port or host:port",
            ));
        }
        if let (_, Some(db)) = split_db(url) {
            if !db.is_empty() && db.parse::<u32>().is_err() {
                return Err(ConfigError::invalid(
                    format!("{key}.db"),
                    "must be a database number",
                ));
            }
        }
    }
    for (name, d) in [
        ("connect_timeout", r.connect_timeout),
        ("io_timeout", r.io_timeout),
        ("presence_ttl", r.presence_ttl),
    ] {
        if d.is_zero() {
            return Err(ConfigError::invalid(
                format!("{key}.{name}"),
                "must be positive",
            ));
        }
    }
    Ok(())
}

fn subject_token_ok(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

fn namespaces(c: &Config) -> impl Iterator<Item = (String, &ChannelOptions)> {
    std::iter::once((
        "channel.without_namespace".to_string(),
        &c.channel.without_namespace,
    ))
    .chain(
        c.channel
            .namespaces
            .iter()
            .enumerate()
            .map(|(i, n)| (format!("channel.namespaces[{i}]"), &n.options)),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redis_url_applies_password_and_db() {
        let mut r = RedisConfig {
            address: "127.0.0.1:6380".into(),
            ..Default::default()
        };
        assert_eq!(r.urls(), ["redis://127.0.0.1:6380"]);
        r.password = "pw".into();
        r.db = Some(3);
        assert_eq!(r.urls(), ["redis://:pw@127.0.0.1:6380/3"]);
        r.address = "redis://:old@h:1/5, h2:2".into();
        assert_eq!(r.urls(), ["redis://:pw@h:1/3", "redis://:pw@h2:2/3"]);
        r.password = "a/b@c#d".into();
        r.address = "rediss://h:1".into();
        assert_eq!(r.urls(), ["rediss://:a%2Fb%40c%23d@h:1/3"]);
    }

    #[test]
    fn addresses_may_be_a_list() {
        let r: RedisConfig = serde_json::from_str(r#"{"address":["a:1","b:2"]}"#).unwrap();
        assert_eq!(r.urls(), ["redis://a:1", "redis://b:2"]);
        let r: RedisConfig = serde_json::from_str(r#"{"address":"a:1"}"#).unwrap();
        assert_eq!(r.urls(), ["redis://a:1"]);
    }
}
