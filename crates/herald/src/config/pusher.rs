//! `pusher`: Herald's own section for apps that speak the Pusher Channels
//! protocol (pusher-js, Laravel Echo, the Pusher server libraries). Each app
//! keeps its channels in one Herald namespace.

use serde::{Deserialize, Serialize};

use super::webhook::{self, Webhook};
use super::{Config, ConfigError, Dur, Secret};

/// The events a Pusher app's webhooks can ask for (Pusher's names).
pub const WEBHOOK_EVENTS: [&str; 7] = [
    "channel_occupied",
    "channel_vacated",
    "member_added",
    "member_removed",
    "client_event",
    "cache_miss",
    "subscription_count",
];

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
    /// Pusher's subscription counting: the subscribers of a channel (other
    /// than a presence channel) hear how many it has whenever that changes
    /// (`pusher_internal:subscription_count`), and so do the webhooks that
    /// ask for `subscription_count`.
    pub enable_subscription_count: bool,
    /// A channel with more than 100 subscribers hears its count at most
    /// this often (Pusher: 5 s); smaller ones at every change.
    pub subscription_count_interval: Dur,
    /// Pusher's watchlist events: a socket signed in with a `watchlist` in
    /// its `user_data` is told when the users in it come online (signed in
    /// on a first socket of the app) and go offline (their last one gone).
    pub enable_watchlist_events: bool,
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
    /// Where the app's events are POSTed in Pusher's webhook format,
    /// through Herald's durable webhook queue.
    pub webhooks: Vec<PusherWebhook>,
}

/// One of an app's webhooks: Pusher's `url` and `event_types`, with the
/// delivery settings of Herald's own webhooks.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct PusherWebhook {
    pub url: String,
    /// The events sent (empty: all of [`WEBHOOK_EVENTS`]).
    pub event_types: Vec<String>,
    /// Longest wait for the receiver's answer to one attempt.
    pub timeout: Dur,
    /// Attempts before an event becomes a dead letter.
    pub max_attempts: u32,
    /// The delay before the second attempt; each later one doubles it.
    pub retry_initial_delay: Dur,
}

impl Default for PusherWebhook {
    fn default() -> Self {
        let d = Webhook::default();
        Self {
            url: String::new(),
            event_types: Vec::new(),
            timeout: d.timeout,
            max_attempts: d.max_attempts,
            retry_initial_delay: d.retry_initial_delay,
        }
    }
}

impl PusherApp {
    /// The app's webhooks as durable webhooks: named `pusher:<id>:<n>`
    /// (the dead-letter API's names), signed with the app's secret.
    pub fn hooks(&self) -> impl Iterator<Item = Webhook> + '_ {
        self.webhooks.iter().enumerate().map(|(n, h)| Webhook {
            name: format!("pusher:{}:{n}", self.id),
            url: h.url.clone(),
            events: h.event_types.clone(),
            secret: self.secret.clone(),
            timeout: h.timeout,
            max_attempts: h.max_attempts,
            retry_initial_delay: h.retry_initial_delay,
        })
    }
}

impl Default for PusherApp {
    fn default() -> Self {
        Self {
            id: String::new(),
            key: String::new(),
            secret: Secret::default(),
            namespace: String::new(),
            enable_client_messages: false,
            enable_subscription_count: false,
            subscription_count_interval: Dur::secs(5),
            enable_watchlist_events: false,
            max_connections: 0,
            max_event_size: 10 * 1024,
            activity_timeout: Dur::secs(120),
            max_client_events_per_second: 10,
            max_messages_per_second: 100,
            max_presence_members: 100,
            max_presence_member_size: 1024,
            webhooks: Vec::new(),
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
        for (n, hook) in app.hooks().enumerate() {
            let field = |f: &str| {
                let f = if f == "events" { "event_types" } else { f };
                key(&format!("webhooks[{n}].{f}"))
            };
            webhook::check(&hook, &WEBHOOK_EVENTS, &field)?;
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
