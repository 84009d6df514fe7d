//! What the server API's methods take and give, whatever carries them: the
//! HTTP API reads requests from JSON and writes results as JSON, the gRPC
//! API converts its messages to and from these. Requests keep payloads as
//! raw JSON; unknown fields are ignored. Results serialize as Centrifugo
//! writes them (empty fields left out).

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use herald_protocol::{ClientInfo, Publication};
use serde::ser::SerializeMap;
use serde::{Deserialize, Serialize, Serializer};
use serde_json::value::RawValue;
use utoipa::ToSchema;

use super::ApiError;
use crate::auth::{Overrides, RawOverrides};
use crate::wire::control::NodeInfo;

/// Raw JSON, `null` counting as absent.
pub type Json = Option<Box<RawValue>>;

/// A publish, or a broadcast (`channels` instead of `channel`).
#[derive(Debug, Serialize, Deserialize, Default, ToSchema)]
#[serde(default)]
pub struct PublishRequest {
    pub channel: String,
    pub channels: Vec<String>,
    #[schema(value_type = Option<serde_json::Value>)]
    pub data: Json,
    pub b64data: String,
    pub tags: BTreeMap<String, String>,
    pub skip_history: bool,
    pub idempotency_key: String,
    /// Publish only when above the stream's last version (0: no version).
    pub version: u64,
    /// The version's epoch: a new one starts versions over.
    pub version_epoch: String,
    /// Subscribers that negotiated deltas (`allowed_delta_types`) may get
    /// this publication as a Fossil delta against the channel's previous
    /// one.
    pub delta: bool,
}

/// A position in a stream, as the API writes it.
#[derive(Debug, Deserialize, Serialize, Default, Clone, ToSchema)]
#[serde(default)]
pub struct Position {
    pub offset: u64,
    pub epoch: String,
}

#[derive(Debug, Serialize, Deserialize, Default, ToSchema)]
#[serde(default)]
pub struct SubscribeRequest {
    pub user: String,
    pub client: String,
    pub session: String,
    pub channel: String,
    #[schema(value_type = Option<serde_json::Value>)]
    pub info: Json,
    pub b64info: String,
    #[schema(value_type = Option<serde_json::Value>)]
    pub data: Json,
    pub b64data: String,
    pub expire_at: i64,
    pub recover_since: Option<Position>,
    #[serde(rename = "override", deserialize_with = "overrides")]
    #[schema(value_type = Option<SubscribeOptionOverride>)]
    pub overrides: Option<Overrides>,
}

/// A namespace option a subscription overrides.
#[derive(ToSchema)]
#[allow(dead_code)]
pub struct BoolValue {
    value: bool,
}

/// Namespace options one subscription overrides (absent: the namespace's).
#[derive(ToSchema)]
#[allow(dead_code)]
pub struct SubscribeOptionOverride {
    presence: Option<BoolValue>,
    join_leave: Option<BoolValue>,
    force_recovery: Option<BoolValue>,
    force_positioning: Option<BoolValue>,
    force_push_join_leave: Option<BoolValue>,
}

/// Overrides as Centrifugo writes them: `{"presence": {"value": true}}`.
fn overrides<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<Overrides>, D::Error> {
    Ok(Option::<RawOverrides>::deserialize(d)?.map(Overrides::from))
}

#[derive(Debug, Serialize, Deserialize, Default, ToSchema)]
#[serde(default)]
pub struct UnsubscribeRequest {
    pub user: String,
    pub client: String,
    pub session: String,
    pub channel: String,
}

#[derive(Debug, Serialize, Deserialize, Default, ToSchema)]
#[serde(default)]
pub struct DisconnectCode {
    pub code: u32,
    pub reason: String,
}

#[derive(Debug, Serialize, Deserialize, Default, ToSchema)]
#[serde(default)]
pub struct DisconnectRequest {
    pub user: String,
    pub client: String,
    pub session: String,
    pub whitelist: Vec<String>,
    pub disconnect: Option<DisconnectCode>,
}

#[derive(Debug, Serialize, Deserialize, Default, ToSchema)]
#[serde(default)]
pub struct RefreshRequest {
    pub user: String,
    pub client: String,
    pub session: String,
    pub expired: bool,
    pub expire_at: i64,
    #[schema(value_type = Option<serde_json::Value>)]
    pub info: Json,
}

/// Block a user: its connections close (3503) and new ones are refused,
/// until `unblock_user` or `expire_at` (Unix seconds; 0: no end).
#[derive(Debug, Serialize, Deserialize, Default, ToSchema)]
#[serde(default)]
pub struct BlockUserRequest {
    pub user: String,
    pub expire_at: i64,
}

#[derive(Debug, Serialize, Deserialize, Default, ToSchema)]
#[serde(default)]
pub struct UnblockUserRequest {
    pub user: String,
}

/// Revoke the tokens whose `jti` is `uid`, until `expire_at` (best: the
/// token's own expiry).
#[derive(Debug, Serialize, Deserialize, Default, ToSchema)]
#[serde(default)]
pub struct RevokeTokenRequest {
    pub uid: String,
    pub expire_at: i64,
}

/// Revoke a user's tokens issued (`iat`) before `issued_before` (0: now):
/// connection tokens, or with `channel` that channel's subscription
/// tokens.
#[derive(Debug, Serialize, Deserialize, Default, ToSchema)]
#[serde(default)]
pub struct InvalidateUserTokensRequest {
    pub user: String,
    pub issued_before: i64,
    pub expire_at: i64,
    pub channel: String,
}

/// `webhook_dead_letters`: events a webhook gave up on (Herald).
#[derive(Debug, Serialize, Deserialize, Default, ToSchema)]
#[serde(default)]
pub struct WebhookDeadLettersRequest {
    /// Only this webhook's (empty: every webhook's).
    pub webhook: String,
    /// At most this many, oldest first (0: 100; at most 1000).
    pub limit: i64,
}

/// `webhook_redrive`: sends dead letters again, attempts reset (Herald).
#[derive(Debug, Serialize, Deserialize, Default, ToSchema)]
#[serde(default)]
pub struct WebhookRedriveRequest {
    /// These dead letters (by `id`); empty: every one (of `webhook`).
    pub ids: Vec<String>,
    pub webhook: String,
}

/// One dead letter.
#[derive(Debug, Serialize, ToSchema)]
pub struct DeadLetterDoc {
    pub id: String,
    pub webhook: String,
    pub event: String,
    pub attempts: i64,
    pub last_error: String,
    pub created_ms: i64,
    /// The event as it was (and will be) POSTed.
    #[schema(value_type = Object)]
    pub body: serde_json::Value,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct WebhookDeadLettersResult {
    pub dead_letters: Vec<DeadLetterDoc>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct WebhookRedriveResult {
    /// How many dead letters are due again.
    pub redriven: u64,
}

/// Methods that name only a channel (presence, presence stats, history
/// removal).
#[derive(Debug, Serialize, Deserialize, Default, ToSchema)]
#[serde(default)]
pub struct ChannelRequest {
    pub channel: String,
}

#[derive(Debug, Serialize, Deserialize, Default, ToSchema)]
#[serde(default)]
pub struct HistoryRequest {
    pub channel: String,
    /// 0: only the position; negative: everything kept.
    pub limit: i64,
    pub since: Option<Position>,
    pub reverse: bool,
}

#[derive(Debug, Serialize, Deserialize, Default, ToSchema)]
#[serde(default)]
pub struct ChannelsRequest {
    pub pattern: String,
}

#[derive(Debug, Serialize, Deserialize, Default, ToSchema)]
#[serde(default)]
pub struct InfoRequest {}

#[derive(Debug, Serialize, Deserialize, Default, ToSchema)]
#[serde(default)]
pub struct BatchRequest {
    /// Each `{"<method>": <its request>}`.
    #[schema(value_type = Vec<HashMap<String, Object>>)]
    pub commands: Vec<HashMap<String, Box<RawValue>>>,
    /// Run the commands at once rather than one after the other; replies
    /// keep the commands' order either way.
    pub parallel: bool,
}

/// One method call, whatever carried it.
#[derive(Debug)]
pub enum Request {
    Publish(PublishRequest),
    Broadcast(PublishRequest),
    Subscribe(SubscribeRequest),
    Unsubscribe(UnsubscribeRequest),
    Disconnect(DisconnectRequest),
    Refresh(RefreshRequest),
    Presence(ChannelRequest),
    PresenceStats(ChannelRequest),
    History(HistoryRequest),
    HistoryRemove(ChannelRequest),
    Channels(ChannelsRequest),
    Info(InfoRequest),
    BlockUser(BlockUserRequest),
    UnblockUser(UnblockUserRequest),
    RevokeToken(RevokeTokenRequest),
    InvalidateUserTokens(InvalidateUserTokensRequest),
    WebhookDeadLetters(WebhookDeadLettersRequest),
    WebhookRedrive(WebhookRedriveRequest),
    /// A batch's commands, each already read (or the error reading it).
    Batch {
        commands: Vec<Result<Request, ApiError>>,
        parallel: bool,
    },
}

impl Request {
    /// The method's name in the HTTP API and in a batch.
    pub fn method(&self) -> &'static str {
        match self {
            Request::Publish(_) => "publish",
            Request::Broadcast(_) => "broadcast",
            Request::Subscribe(_) => "subscribe",
            Request::Unsubscribe(_) => "unsubscribe",
            Request::Disconnect(_) => "disconnect",
            Request::Refresh(_) => "refresh",
            Request::Presence(_) => "presence",
            Request::PresenceStats(_) => "presence_stats",
            Request::History(_) => "history",
            Request::HistoryRemove(_) => "history_remove",
            Request::Channels(_) => "channels",
            Request::Info(_) => "info",
            Request::BlockUser(_) => "block_user",
            Request::UnblockUser(_) => "unblock_user",
            Request::RevokeToken(_) => "revoke_token",
            Request::InvalidateUserTokens(_) => "invalidate_user_tokens",
            Request::WebhookDeadLetters(_) => "webhook_dead_letters",
            Request::WebhookRedrive(_) => "webhook_redrive",
            Request::Batch { .. } => "batch",
        }
    }
}

/// Where a publication landed; empty for channels without history.
#[derive(Debug, Serialize, Default, Clone, PartialEq, Eq, ToSchema)]
pub struct PublishResult {
    #[serde(skip_serializing_if = "is_zero")]
    pub offset: u64,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub epoch: String,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

/// One channel's outcome in a broadcast.
#[derive(Debug)]
pub struct BroadcastReply(pub Result<PublishResult, ApiError>);

impl Serialize for BroadcastReply {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut map = s.serialize_map(Some(1))?;
        match &self.0 {
            Ok(result) => map.serialize_entry("result", result)?,
            Err(e) => map.serialize_entry("error", &e.to_json())?,
        }
        map.end()
    }
}

#[derive(Debug, Serialize, ToSchema)]
pub struct BroadcastResult {
    /// One per channel, in the request's order.
    #[schema(value_type = Vec<PublishReply>)]
    pub responses: Vec<BroadcastReply>,
}

/// A broadcast's outcome in one channel: `result` or `error`.
#[derive(ToSchema)]
#[allow(dead_code)]
pub struct PublishReply {
    result: Option<PublishResult>,
    error: Option<ErrorDoc>,
}

/// An error: its code and message.
#[derive(ToSchema)]
#[schema(as = Error)]
#[allow(dead_code)]
pub struct ErrorDoc {
    code: u32,
    message: String,
}

/// A connection as presence and publications show it.
#[derive(ToSchema)]
#[schema(as = ClientInfo)]
#[allow(dead_code)]
pub struct ClientInfoDoc {
    user: String,
    client: String,
    #[schema(value_type = Option<serde_json::Value>)]
    conn_info: Option<()>,
    #[schema(value_type = Option<serde_json::Value>)]
    chan_info: Option<()>,
}

/// A publication in a stream.
#[derive(ToSchema)]
#[schema(as = Publication)]
#[allow(dead_code)]
pub struct PublicationDoc {
    #[schema(value_type = serde_json::Value)]
    data: (),
    info: Option<ClientInfoDoc>,
    offset: u64,
    tags: Option<BTreeMap<String, String>>,
}

/// Who is in a channel: client id → client info.
#[derive(Debug, ToSchema)]
pub struct PresenceResult {
    #[schema(value_type = HashMap<String, ClientInfoDoc>)]
    pub presence: HashMap<String, Arc<ClientInfo>>,
}

impl Serialize for PresenceResult {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut outer = s.serialize_map(Some(1))?;
        let members: BTreeMap<&str, RawJson> = self
            .presence
            .iter()
            .map(|(client, info)| {
                let json = herald_protocol::json::encode_client_info(info);
                (client.as_str(), RawJson(json))
            })
            .collect();
        outer.serialize_entry("presence", &members)?;
        outer.end()
    }
}

#[derive(Debug, Serialize, ToSchema)]
pub struct PresenceStatsResult {
    pub num_clients: u32,
    pub num_users: u32,
}

#[derive(Debug, ToSchema)]
pub struct HistoryResult {
    #[schema(value_type = Vec<PublicationDoc>)]
    pub publications: Vec<Arc<Publication>>,
    pub epoch: String,
    pub offset: u64,
}

impl Serialize for HistoryResult {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut map = s.serialize_map(Some(3))?;
        let pubs: Vec<RawJson> = self
            .publications
            .iter()
            .map(|p| RawJson(herald_protocol::json::encode_publication(p)))
            .collect();
        map.serialize_entry("publications", &pubs)?;
        map.serialize_entry("epoch", &self.epoch)?;
        map.serialize_entry("offset", &self.offset)?;
        map.end()
    }
}

/// JSON encoded already (by the protocol's encoder), written as it is.
struct RawJson(Vec<u8>);

impl Serialize for RawJson {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        // Everything encoded was valid JSON when it arrived.
        match std::str::from_utf8(&self.0)
            .ok()
            .and_then(|text| RawValue::from_string(text.to_string()).ok())
        {
            Some(raw) => raw.serialize(s),
            None => {
                tracing::error!("stored data is not valid JSON");
                s.serialize_unit()
            }
        }
    }
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ChannelInfo {
    pub num_clients: u32,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ChannelsResult {
    pub channels: BTreeMap<String, ChannelInfo>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct InfoResult {
    #[schema(value_type = Vec<NodeDoc>)]
    pub nodes: Vec<NodeInfo>,
}

/// A node of the cluster.
#[derive(ToSchema)]
#[schema(as = Node)]
#[allow(dead_code)]
pub struct NodeDoc {
    uid: String,
    name: String,
    version: String,
    num_clients: u64,
    num_users: u64,
    num_channels: u64,
    num_subs: u64,
    /// Seconds since the node started.
    uptime: u64,
    /// Publications accepted by the node since it started.
    num_publications: u64,
}

/// A batch command's outcome, named by its method.
#[derive(Debug)]
pub struct BatchReply {
    pub method: &'static str,
    pub result: Result<Response, ApiError>,
}

impl Serialize for BatchReply {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut map = s.serialize_map(Some(1))?;
        match &self.result {
            Ok(response) => map.serialize_entry(self.method, response)?,
            Err(e) => map.serialize_entry("error", &e.to_json())?,
        }
        map.end()
    }
}

#[derive(Debug, Serialize, ToSchema)]
pub struct BatchResult {
    /// One per command, in order: `{"<method>": <its result>}` or
    /// `{"error": …}`.
    #[schema(value_type = Vec<HashMap<String, Object>>)]
    pub replies: Vec<BatchReply>,
}

/// An empty result (`{}`).
#[derive(Debug, Serialize, Default, ToSchema)]
pub struct Empty {}

/// What a method gives.
#[derive(Debug, Serialize)]
#[serde(untagged)]
pub enum Response {
    Publish(PublishResult),
    Broadcast(BroadcastResult),
    Presence(PresenceResult),
    PresenceStats(PresenceStatsResult),
    History(HistoryResult),
    Channels(ChannelsResult),
    Info(InfoResult),
    Batch(BatchResult),
    WebhookDeadLetters(WebhookDeadLettersResult),
    WebhookRedrive(WebhookRedriveResult),
    /// Subscribe, unsubscribe, disconnect, refresh and history removal.
    Empty(Empty),
}
