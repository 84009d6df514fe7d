//! Channel options, per namespace, with Centrifugo's option names. Every
//! option is parsed; presence and history take effect with the history work.

use serde::{Deserialize, Serialize};

use super::Dur;

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct ChannelConfig {
    /// Longest channel name accepted; longer ones get error 107.
    pub max_length: usize,
    /// Herald: most bytes of a publication's `data`; a larger publish gets
    /// error 106. Zero (the default): as much as a subscriber's queue
    /// (`client.queue_max_size`) can take with the push around it; a set
    /// value must fit there too, or no one could receive the publication.
    pub publication_max_size: usize,
    /// Herald: how long a server API publish's `idempotency_key` is
    /// remembered per channel; a retry within it publishes nothing and gets
    /// the first publish's result.
    pub idempotency_window: Dur,
    pub private_prefix: String,
    pub namespace_boundary: String,
    pub user_boundary: String,
    pub user_separator: String,
    pub history_meta_ttl: Dur,
    /// The `default` subscribe, publish and sub_refresh proxies.
    pub proxy: super::proxy::ChannelProxies,
    pub without_namespace: ChannelOptions,
    pub namespaces: Vec<Namespace>,
}

impl Default for ChannelConfig {
    fn default() -> Self {
        Self {
            max_length: 255,
            publication_max_size: 0,
            idempotency_window: Dur::secs(300),
            private_prefix: "$".into(),
            namespace_boundary: ":".into(),
            user_boundary: "#".into(),
            user_separator: ",".into(),
            history_meta_ttl: Dur::secs(720 * 3600),
            proxy: Default::default(),
            without_namespace: ChannelOptions::default(),
            namespaces: Vec::new(),
        }
    }
}

impl ChannelConfig {
    /// Whether any namespace keeps durable history (so storage must open).
    pub fn uses_durable_history(&self) -> bool {
        std::iter::once(&self.without_namespace)
            .chain(self.namespaces.iter().map(|n| &n.options))
            .any(|o| o.history_storage == HistoryStorage::Durable)
    }
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct Namespace {
    pub name: String,
    #[serde(flatten)]
    pub options: ChannelOptions,
}

/// Where a namespace keeps its history (Herald-specific).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum HistoryStorage {
    #[default]
    Memory,
    Durable,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct ChannelOptions {
    pub presence: bool,
    pub join_leave: bool,
    pub force_push_join_leave: bool,
    pub history_size: usize,
    pub history_ttl: Dur,
    pub history_meta_ttl: Dur,
    pub history_storage: HistoryStorage,
    pub force_positioning: bool,
    pub allow_positioning: bool,
    pub force_recovery: bool,
    pub allow_recovery: bool,
    pub force_recovery_mode: String,
    /// Delta types subscribers may ask for: [`FOSSIL`] is the one there is.
    pub allowed_delta_types: Vec<String>,
    pub delta_publish: bool,
    /// Subscribers may ask for only the publications whose tags pass a
    /// filter (the subscribe command's `tf`).
    pub allow_tags_filter: bool,
    pub allow_subscribe_for_anonymous: bool,
    pub allow_subscribe_for_client: bool,
    pub allow_publish_for_anonymous: bool,
    pub allow_publish_for_subscriber: bool,
    pub allow_publish_for_client: bool,
    pub allow_presence_for_anonymous: bool,
    pub allow_presence_for_subscriber: bool,
    pub allow_presence_for_client: bool,
    pub allow_history_for_anonymous: bool,
    pub allow_history_for_subscriber: bool,
    pub allow_history_for_client: bool,
    pub allow_user_limited_channels: bool,
    /// When set, channel names in this namespace must match it.
    pub channel_regex: String,
    pub publication_data_format: String,
    pub subscribe_proxy_enabled: bool,
    pub publish_proxy_enabled: bool,
    pub sub_refresh_proxy_enabled: bool,
    /// Which proxy serves the event: one of the `proxies` list, or
    /// `default` (and empty): `channel.proxy.<event>`.
    pub subscribe_proxy_name: String,
    pub publish_proxy_name: String,
    pub sub_refresh_proxy_name: String,
    /// Herald: this namespace's `channel.publication_max_size` (zero: the
    /// global one).
    pub publication_max_size: usize,
}

/// Room a publication's push needs in a subscriber's queue beyond its data
/// and channel name: the push's own keys, an offset, the publisher's info.
pub const PUSH_ROOM: usize = 8 * 1024;

impl ChannelConfig {
    /// The most bytes of `data` a publication in a namespace with
    /// `options` may have, for subscribers with queues of `queue_max_size`.
    pub fn publication_limit(&self, options: &ChannelOptions, queue_max_size: usize) -> usize {
        match (options.publication_max_size, self.publication_max_size) {
            (0, 0) => self.publication_room(queue_max_size),
            (0, global) => global,
            (own, _) => own,
        }
    }

    /// The most a queue of `queue_max_size` bytes leaves for a
    /// publication's data.
    pub fn publication_room(&self, queue_max_size: usize) -> usize {
        queue_max_size.saturating_sub(self.max_length + PUSH_ROOM)
    }
}

/// The Fossil delta type (`allowed_delta_types`, the subscribe `delta`).
pub const FOSSIL: &str = "fossil";
