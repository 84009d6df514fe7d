//! Herald's durable webhooks: `webhooks: [{ name, url, events, secret,
//! timeout, max_attempts }]`.

use serde::{Deserialize, Serialize};

use super::{ConfigError, Dur, Secret};

/// Every event a webhook can ask for.
pub const EVENTS: [&str; 8] = [
    "connect",
    "disconnect",
    "subscribe",
    "unsubscribe",
    "channel_occupied",
    "channel_vacated",
    "user_online",
    "user_offline",
];

/// The most attempts an event may have: each delay doubles the one
/// before, so more would wait for decades.
pub const MAX_ATTEMPTS: u32 = 30;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Webhook {
    /// Names the webhook in logs, metrics and the dead-letter API.
    pub name: String,
    /// Where events are POSTed (`http://` or `https://`).
    pub url: String,
    /// The events sent (empty: all of them).
    pub events: Vec<String>,
    /// Signs each body (`X-Herald-Signature: sha256=<hex HMAC-SHA256>`).
    pub secret: Secret,
    /// Longest wait for the receiver's answer to one attempt.
    pub timeout: Dur,
    /// Attempts before an event becomes a dead letter.
    pub max_attempts: u32,
    /// The delay before the second attempt; each later one doubles it
    /// (±25% jitter).
    pub retry_initial_delay: Dur,
}

impl Default for Webhook {
    fn default() -> Self {
        Self {
            name: String::new(),
            url: String::new(),
            events: Vec::new(),
            secret: Secret::default(),
            timeout: Dur::secs(5),
            max_attempts: 10,
            retry_initial_delay: Dur::secs(1),
        }
    }
}

impl Webhook {
    /// Whether the webhook asked for `event` (all when it named none).
    pub fn wants(&self, event: &str) -> bool {
        self.events.is_empty() || self.events.iter().any(|e| e == event)
    }
}

pub fn validate(hooks: &[Webhook]) -> Result<(), ConfigError> {
    let mut names = std::collections::HashSet::new();
    for (i, h) in hooks.iter().enumerate() {
        let key = |field: &str| format!("webhooks[{i}].{field}");
        // `pusher:…` names are those of the Pusher apps' webhooks.
        if h.name.is_empty() || h.name.starts_with("pusher:") || !names.insert(h.name.as_str()) {
            return Err(ConfigError::invalid(
                key("name"),
                "give each webhook a name of its own (not starting with `pusher:`)",
            ));
        }
        check(h, &EVENTS, &key)?;
    }
    Ok(())
}

/// Checks a webhook's URL, events (of `known`) and delivery settings;
/// `key` names a field in errors.
pub fn check(h: &Webhook, known: &[&str], key: &dyn Fn(&str) -> String) -> Result<(), ConfigError> {
    let url_ok = (h.url.starts_with("http://") || h.url.starts_with("https://"))
        && h.url
            .parse::<hyper::Uri>()
            .is_ok_and(|u| u.host().is_some_and(|h| !h.is_empty()));
    if !url_ok {
        return Err(ConfigError::invalid(
            key("url"),
            "set an http:// or https:// URL",
        ));
    }
    if let Some(e) = h.events.iter().find(|e| !known.contains(&e.as_str())) {
        return Err(ConfigError::invalid(
            key("events"),
            format!("unknown event `{e}`; use {}", known.join(", ")),
        ));
    }
    if h.timeout.is_zero() {
        return Err(ConfigError::invalid(key("timeout"), "must be positive"));
    }
    if !(1..=MAX_ATTEMPTS).contains(&h.max_attempts) {
        return Err(ConfigError::invalid(
            key("max_attempts"),
            format!("from 1 to {MAX_ATTEMPTS}"),
        ));
    }
    if h.retry_initial_delay.is_zero() {
        return Err(ConfigError::invalid(
            key("retry_initial_delay"),
            "must be positive",
        ));
    }
    Ok(())
}
