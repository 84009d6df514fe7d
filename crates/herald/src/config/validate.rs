//! Checks that go beyond types: names, ranges, keys that must parse, and
//! combinations that cannot work. Each error names the offending key.

use std::collections::HashSet;

use super::{ChannelOptions, Config, ConfigError, HistoryStorage, StorageKind};

pub fn validate(c: &Config, warnings: &mut Vec<String>) -> Result<(), ConfigError> {
    validate_client(c, warnings)?;
    validate_channels(c)?;
    validate_tls(c)?;
    super::proxy::validate(c)?;
    super::webhook::validate(&c.webhooks)?;
    super::cluster::validate_cluster(c)?;
    super::admin::validate(c, warnings)?;
    super::pusher::validate(c, warnings)?;
    if !matches!(
        c.log.level.as_str(),
        "trace" | "debug" | "info" | "warn" | "error" | "none"
    ) {
        return Err(ConfigError::invalid(
            "log.level",
            "use one of trace, debug, info, warn, error, none",
        ));
    }
    if !matches!(c.log.format.as_str(), "text" | "json") {
        return Err(ConfigError::invalid("log.format", "use text or json"));
    }
    validate_storage(c)?;
    validate_transport_paths(c)?;
    if c.http_server.header_read_timeout.is_zero() {
        return Err(ConfigError::invalid(
            "http_server.header_read_timeout",
            "must be positive",
        ));
    }
    let internal = &c.http_server.internal_port;
    if !internal.is_empty() && internal.parse::<u16>().is_err() {
        return Err(ConfigError::invalid(
            "http_server.internal_port",
            "a port number (0 to 65535), or empty for none",
        ));
    }
    if c.http_server.request_body_timeout.is_zero() {
        return Err(ConfigError::invalid(
            "http_server.request_body_timeout",
            "must be positive",
        ));
    }
    if c.client.write_delay.0 > std::time::Duration::from_secs(1) {
        return Err(ConfigError::invalid(
            "client.write_delay",
            "at most 1s: messages wait this long before every write",
        ));
    }
    if c.client.adaptive_write_delay.0 > std::time::Duration::from_secs(1) {
        return Err(ConfigError::invalid(
            "client.adaptive_write_delay",
            "at most 1s: a busy connection's messages may wait this long",
        ));
    }
    if c.websocket.message_size_limit == 0 {
        return Err(ConfigError::invalid(
            "websocket.message_size_limit",
            "must be positive",
        ));
    }
    for (key, level) in [
        ("websocket.compression_level", c.websocket.compression_level),
        (
            "uni_websocket.compression_level",
            c.uni_websocket.compression_level,
        ),
    ] {
        if !(-1..=9).contains(&level) {
            return Err(ConfigError::invalid(
                key,
                "0 (no compression) to 9 (smallest), or -1 for the default (6)",
            ));
        }
    }
    if c.http_api.max_request_body_size == 0 {
        return Err(ConfigError::invalid(
            "http_api.max_request_body_size",
            "must be positive",
        ));
    }
    if !c.http_api.insecure && !c.http_api.disabled && c.http_api.key.is_empty() {
        warnings.push("http_api.key is empty: the server API refuses every request (set a key, or http_api.insecure)".into());
    }
    Ok(())
}

fn validate_client(c: &Config, warnings: &mut Vec<String>) -> Result<(), ConfigError> {
    let cl = &c.client;
    if !cl.ping_interval.is_zero()
        && !cl.pong_timeout.is_zero()
        && cl.pong_timeout >= cl.ping_interval
    {
        return Err(ConfigError::invalid(
            "client.pong_timeout",
            "must be shorter than client.ping_interval",
        ));
    }
    for origin in &cl.allowed_origins {
        if let Err(why) = crate::origin::check_pattern(origin) {
            warnings.push(format!(
                "client.allowed_origins: {origin:?} never matches a browser: {why}"
            ));
        }
    }
    if cl.queue_max_size == 0 {
        return Err(ConfigError::invalid(
            "client.queue_max_size",
            "must be positive",
        ));
    }
    if cl.channel_limit == 0 {
        return Err(ConfigError::invalid(
            "client.channel_limit",
            "must be positive",
        ));
    }
    let personal = &cl.subscribe_to_user_personal_channel;
    if personal.enabled
        && !personal.personal_channel_namespace.is_empty()
        && !c
            .channel
            .namespaces
            .iter()
            .any(|n| n.name == personal.personal_channel_namespace)
    {
        return Err(ConfigError::invalid(
            "client.subscribe_to_user_personal_channel.personal_channel_namespace",
            format!(
                "namespace {:?} is not in channel.namespaces",
                personal.personal_channel_namespace
            ),
        ));
    }
    cl.token.keys("client.token")?;
    if cl.subscription_token.enabled {
        cl.subscription_token
            .token
            .keys("client.subscription_token")?;
    }
    let t = &cl.token;
    if t.hmac_secret_key.is_empty()
        && t.rsa_public_key.is_empty()
        && t.ecdsa_public_key.is_empty()
        && !cl.insecure
    {
        warnings
            .push("no client.token key is configured: connections with a token are refused".into());
    }
    Ok(())
}

fn validate_tls(c: &Config) -> Result<(), ConfigError> {
    c.http_server.tls.load("http_server.tls")?;
    if c.uni_grpc.enabled {
        c.uni_grpc.tls.load("uni_grpc.tls")?;
    }
    if c.grpc_api.enabled {
        c.grpc_api.tls.load("grpc_api.tls")?;
    }
    Ok(())
}

fn validate_channels(c: &Config) -> Result<(), ConfigError> {
    let ch = &c.channel;
    if ch.max_length == 0 {
        return Err(ConfigError::invalid(
            "channel.max_length",
            "must be positive",
        ));
    }
    if ch.idempotency_window.0.is_zero() {
        return Err(ConfigError::invalid(
            "channel.idempotency_window",
            "must be positive",
        ));
    }
    for (key, value) in [
        ("channel.namespace_boundary", &ch.namespace_boundary),
        ("channel.user_boundary", &ch.user_boundary),
        ("channel.user_separator", &ch.user_separator),
    ] {
        if value.is_empty() {
            return Err(ConfigError::invalid(key, "must not be empty"));
        }
    }
    validate_options(&ch.without_namespace, "channel.without_namespace")?;
    check_publication_limit(c, &ch.without_namespace, "channel.without_namespace")?;
    let name_re = regex::Regex::new(r"^[-a-zA-Z0-9_.]{2,}$").expect("static regex");
    let mut seen = HashSet::new();
    for (i, ns) in ch.namespaces.iter().enumerate() {
        let key = format!("channel.namespaces[{i}]");
        if !name_re.is_match(&ns.name) {
            return Err(ConfigError::invalid(
                format!("{key}.name"),
                format!(
                    "{:?} is not a valid namespace name (2 or more of a-z A-Z 0-9 _ - .)",
                    ns.name
                ),
            ));
        }
        if !seen.insert(ns.name.as_str()) {
            return Err(ConfigError::invalid(
                format!("{key}.name"),
                format!("namespace {:?} is defined twice", ns.name),
            ));
        }
        validate_options(&ns.options, &key)?;
        check_publication_limit(c, &ns.options, &key)?;
    }
    Ok(())
}

/// A publication as large as the limit lets it be must fit in a
/// subscriber's queue, or every subscriber would be closed as too slow
/// (3008) each time it is delivered or recovered.
fn check_publication_limit(c: &Config, o: &ChannelOptions, key: &str) -> Result<(), ConfigError> {
    let queue = c.client.queue_max_size;
    let limit = c.channel.publication_limit(o, queue);
    let room = c.channel.publication_room(queue);
    if limit > room {
        let name = if o.publication_max_size == 0 {
            "channel.publication_max_size".to_string()
        } else {
            format!("{key}.publication_max_size")
        };
        return Err(ConfigError::invalid(
            name,
            format!(
                "{limit} bytes do not fit in a subscriber's queue: client.queue_max_size {queue} \
                 leaves {room} for a publication's data"
            ),
        ));
    }
    Ok(())
}

fn validate_options(o: &ChannelOptions, key: &str) -> Result<(), ConfigError> {
    if !o.channel_regex.is_empty() {
        regex::Regex::new(&o.channel_regex)
            .map_err(|e| ConfigError::invalid(format!("{key}.channel_regex"), e.to_string()))?;
    }
    if o.history_storage == HistoryStorage::Memory && o.history_size > 0 && o.history_ttl.is_zero()
    {
        return Err(ConfigError::invalid(
            format!("{key}.history_ttl"),
            "must be set when history_size is set",
        ));
    }
    if !matches!(o.force_recovery_mode.as_str(), "" | "stream" | "cache") {
        return Err(ConfigError::invalid(
            format!("{key}.force_recovery_mode"),
            "use \"stream\" or \"cache\"",
        ));
    }
    if let Some(t) = o
        .allowed_delta_types
        .iter()
        .find(|t| *t != super::channel::FOSSIL)
    {
        return Err(ConfigError::invalid(
            format!("{key}.allowed_delta_types"),
            format!("unknown delta type {t:?}: the one there is is \"fossil\""),
        ));
    }
    Ok(())
}

fn validate_storage(c: &Config) -> Result<(), ConfigError> {
    let s = &c.storage;
    let durable = c.channel.uses_durable_history();
    if durable && s.kind == StorageKind::Postgres && s.postgres.url.is_empty() {
        return Err(ConfigError::invalid(
            "storage.postgres.url",
            "is required for durable namespaces on postgres",
        ));
    }
    if s.batch_max_size == 0 {
        return Err(ConfigError::invalid(
            "storage.batch_max_size",
            "must be positive",
        ));
    }
    if s.retention_interval.is_zero() {
        return Err(ConfigError::invalid(
            "storage.retention_interval",
            "must be positive",
        ));
    }
    if s.timeout.is_zero() {
        return Err(ConfigError::invalid("storage.timeout", "must be positive"));
    }
    if s.postgres.pool_size == 0 {
        return Err(ConfigError::invalid(
            "storage.postgres.pool_size",
            "must be positive",
        ));
    }
    Ok(())
}

/// The client transports' paths: each a path of its own (two routes on one
/// path cannot both be served).
fn validate_transport_paths(c: &Config) -> Result<(), ConfigError> {
    let emulated = c.http_stream.enabled || c.sse.enabled;
    let paths = [
        (
            "websocket.handler_prefix",
            !c.websocket.disabled,
            c.websocket.handler_prefix.as_str(),
        ),
        (
            "uni_websocket.handler_prefix",
            c.uni_websocket.enabled,
            &c.uni_websocket.handler_prefix,
        ),
        (
            "uni_http_stream.handler_prefix",
            c.uni_http_stream.enabled,
            c.uni_http_stream.path("/connection/uni_http_stream"),
        ),
        (
            "uni_sse.handler_prefix",
            c.uni_sse.enabled,
            c.uni_sse.path("/connection/uni_sse"),
        ),
        (
            "http_stream.handler_prefix",
            c.http_stream.enabled,
            c.http_stream.path("/connection/http_stream"),
        ),
        (
            "sse.handler_prefix",
            c.sse.enabled,
            c.sse.path("/connection/sse"),
        ),
        (
            "emulation.handler_prefix",
            emulated,
            &c.emulation.handler_prefix,
        ),
    ];
    let mut seen: HashSet<&str> = HashSet::new();
    for (key, enabled, path) in paths {
        if !enabled {
            continue;
        }
        if !path.starts_with('/') || path.contains(['{', '}', '*']) {
            return Err(ConfigError::invalid(key, "a path starting with /"));
        }
        if !seen.insert(path) {
            return Err(ConfigError::invalid(key, "another transport has this path"));
        }
    }
    Ok(())
}
