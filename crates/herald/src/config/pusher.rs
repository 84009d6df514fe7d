//! `pusher`: Herald's own section for apps that speak the Pusher Channels
//! protocol (pusher-js, Laravel Echo, the Pusher server libraries). Each app
//! keeps its channels in one Herald namespace.

use serde::{Deserialize, Serialize};

use super::{Config, ConfigError, Dur, Secret};

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct PusherConfig {
    pub apps: Vec<PusherApp>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct PusherApp {
    /// The app id of the HTTP API's paths (`/apps/{id}/…`).
    pub id: String,
    /// The public key clients connect with (`/app/{key}`).
    pub key: String,
    /// Signs channel authorizations and HTTP API requests.
    pub secret: Secret,
    /// The Herald namespace that holds the app's channels: Pusher channel
    /// `C` is Herald channel `<namespace>:C`.
    pub namespace: String,
    /// Whether clients may send `client-*` events on private and presence
    /// channels.
    pub enable_client_messages: bool,
    /// The most connections the app may have on this node; 0 for no limit.
    pub max_connections: usize,
    /// The largest event data a client or the HTTP API may send, in bytes.
    pub max_event_size: usize,
    /// Told to clients: they ping after this long without a message; the
    /// server pings a socket silent this long, and closes it (4201) when
    /// no answer comes within 30 s.
    pub activity_timeout: Dur,
    /// Client events a socket may send a second (Pusher's limit is 10);
    /// more are refused with error 4301. 0 for no limit.
    pub max_client_events_per_second: u32,
    /// Messages of any kind a socket may send a second; more are refused
    /// with error 4301. 0 for no limit.
    pub max_messages_per_second: u32,
    /// The most users in one presence channel (Pusher's limit is 100);
    /// one more is refused with a subscription error.
    pub max_presence_members: usize,
    /// The largest `user_info` of a presence member, in bytes.
    pub max_presence_member_size: usize,
}

impl Default for PusherApp {
    fn default() -> Self {
        Self {
            id: String::new(),
            key: String::new(),
            secret: Secret::default(),
            namespace: String::new(),
            enable_client_messages: false,
            max_connections: 0,
            max_event_size: 10 * 1024,
            activity_timeout: Dur::secs(120),
            max_client_events_per_second: 10,
            max_messages_per_second: 100,
            max_presence_members: 100,
            max_presence_member_size: 1024,
        }
    }
}

pub fn validate(c: &Config, warnings: &mut Vec<String>) -> Result<(), ConfigError> {
    let apps = &c.pusher.apps;
    if !apps.is_empty() && c.channel.namespace_boundary != ":" {
        return Err(ConfigError::invalid(
            "channel.namespace_boundary",
            "Pusher apps need the default boundary \":\"",
        ));
    }
    for (i, app) in apps.iter().enumerate() {
        let key = |field: &str| format!("pusher.apps[{i}].{field}");
        for (field, value) in [
            ("id", app.id.as_str()),
            ("key", app.key.as_str()),
            ("secret", app.secret.expose()),
            ("namespace", app.namespace.as_str()),
        ] {
            if value.is_empty() {
                return Err(ConfigError::invalid(key(field), "must be set"));
            }
        }
        if !c.channel.namespaces.iter().any(|n| n.name == app.namespace) {
            return Err(ConfigError::invalid(
                key("namespace"),
                format!(
                    "no namespace {:?} in channel.namespaces: the app's channels live there",
                    app.namespace
                ),
            ));
        }
        if app.activity_timeout.0.as_secs() == 0 {
            return Err(ConfigError::invalid(
                key("activity_timeout"),
                "at least one second",
            ));
        }
        if app.max_event_size == 0 {
            return Err(ConfigError::invalid(
                key("max_event_size"),
                "must be positive",
            ));
        }
        if apps[..i].iter().any(|a| a.key == app.key) {
            return Err(ConfigError::invalid(key("key"), "another app has this key"));
        }
        if apps[..i].iter().any(|a| a.id == app.id) {
            return Err(ConfigError::invalid(key("id"), "another app has this id"));
        }
        if apps[..i].iter().any(|a| a.namespace == app.namespace) {
            return Err(ConfigError::invalid(
                key("namespace"),
                "another app keeps its channels there: each app needs its own namespace",
            ));
        }
        if app.max_presence_members == 0 || app.max_presence_member_size == 0 {
            return Err(ConfigError::invalid(
                key("max_presence_members"),
                "max_presence_members and max_presence_member_size must be positive",
            ));
        }
        let ns = c
            .channel
            .namespaces
            .iter()
            .find(|n| n.name == app.namespace);
        if let Some(o) = ns.map(|n| &n.options) {
            if o.allow_subscribe_for_client
                || o.allow_publish_for_client
                || o.allow_publish_for_subscriber
                || o.allow_presence_for_client
                || o.allow_history_for_client
            {
                warnings.push(format!(
                    "{}: namespace {:?} lets Centrifugo clients in without Pusher's signatures (its allow_*_for_client options reach the app's private and presence channels too)",
                    key("namespace"),
                    app.namespace
                ));
            }
        }
    }
    Ok(())
}
