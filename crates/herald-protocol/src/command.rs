//! Commands a client sends. Unknown fields are ignored, because newer SDKs send
//! fields an older server does not know (for example `flag` on subscribe).

use std::collections::HashMap;

use serde::Deserialize;
use serde_json::value::RawValue;

/// Raw JSON payload, kept as text and forwarded without re-encoding.
pub type Raw = Box<RawValue>;

/// One command. Exactly one request field is expected; the first present one in
/// protocol order is taken. A command with no id and no request is a pong.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct Command {
    pub id: u32,
    pub connect: Option<ConnectRequest>,
    pub subscribe: Option<SubscribeRequest>,
    pub unsubscribe: Option<ChannelRequest>,
    pub publish: Option<PublishRequest>,
    pub presence: Option<ChannelRequest>,
    pub presence_stats: Option<ChannelRequest>,
    pub history: Option<HistoryRequest>,
    pub ping: Option<Empty>,
    pub send: Option<SendRequest>,
    pub rpc: Option<RpcRequest>,
    pub refresh: Option<RefreshRequest>,
    pub sub_refresh: Option<SubRefreshRequest>,
    /// A payload of the command was not JSON (only the Protobuf codec,
    /// whose payloads are bytes, can find so): the command gets error 107.
    #[serde(skip)]
    pub payload_not_json: bool,
}

/// The request a command carries, moved out of the [`Command`].
#[derive(Debug)]
pub enum Method {
    Connect(ConnectRequest),
    Subscribe(SubscribeRequest),
    Unsubscribe(ChannelRequest),
    Publish(PublishRequest),
    Presence(ChannelRequest),
    PresenceStats(ChannelRequest),
    History(HistoryRequest),
    Ping,
    Send(SendRequest),
    Rpc(RpcRequest),
    Refresh(RefreshRequest),
    SubRefresh(SubRefreshRequest),
    /// No request field at all: with id 0 this is the client's pong.
    Empty,
}

impl Method {
    /// The command's name in the protocol (`connect`, `sub_refresh`, …;
    /// `empty` for a command with no request).
    pub fn name(&self) -> &'static str {
        match self {
            Method::Connect(_) => "connect",
            Method::Subscribe(_) => "subscribe",
            Method::Unsubscribe(_) => "unsubscribe",
            Method::Publish(_) => "publish",
            Method::Presence(_) => "presence",
            Method::PresenceStats(_) => "presence_stats",
            Method::History(_) => "history",
            Method::Ping => "ping",
            Method::Send(_) => "send",
            Method::Rpc(_) => "rpc",
            Method::Refresh(_) => "refresh",
            Method::SubRefresh(_) => "sub_refresh",
            Method::Empty => "empty",
        }
    }
}

impl Command {
    pub fn into_method(self) -> (u32, Method) {
        let m = if let Some(r) = self.connect {
            Method::Connect(r)
        } else if let Some(r) = self.subscribe {
            Method::Subscribe(r)
        } else if let Some(r) = self.unsubscribe {
            Method::Unsubscribe(r)
        } else if let Some(r) = self.publish {
            Method::Publish(r)
        } else if let Some(r) = self.presence {
            Method::Presence(r)
        } else if let Some(r) = self.presence_stats {
            Method::PresenceStats(r)
        } else if let Some(r) = self.history {
            Method::History(r)
        } else if self.ping.is_some() {
            Method::Ping
        } else if let Some(r) = self.send {
            Method::Send(r)
        } else if let Some(r) = self.rpc {
            Method::Rpc(r)
        } else if let Some(r) = self.refresh {
            Method::Refresh(r)
        } else if let Some(r) = self.sub_refresh {
            Method::SubRefresh(r)
        } else {
            Method::Empty
        };
        (self.id, m)
    }
}

#[derive(Debug, Default, Deserialize)]
pub struct Empty {}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct ConnectRequest {
    pub token: String,
    pub data: Option<Raw>,
    pub subs: HashMap<String, SubscribeRequest>,
    pub name: String,
    pub version: String,
    pub headers: HashMap<String, String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct SubscribeRequest {
    pub channel: String,
    pub token: String,
    pub recover: bool,
    pub epoch: String,
    pub offset: u64,
    pub data: Option<Raw>,
    pub positioned: bool,
    pub recoverable: bool,
    pub join_leave: bool,
    pub delta: String,
    /// Bit flags; 2 asks to fail with 112 rather than subscribe unrecovered.
    pub flag: i64,
    /// Only publications whose tags pass this filter.
    pub tf: Option<crate::filter::FilterNode>,
}

impl SubscribeRequest {
    /// Flag bit by which newer SDKs ask for error 112 instead of an
    /// unrecovered subscription.
    pub const FLAG_REJECT_UNRECOVERED: i64 = 2;
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct ChannelRequest {
    pub channel: String,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct PublishRequest {
    pub channel: String,
    pub data: Option<Raw>,
}

#[derive(Debug, Default, Deserialize, Clone, PartialEq, Eq)]
#[serde(default)]
pub struct StreamPosition {
    pub offset: u64,
    pub epoch: String,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct HistoryRequest {
    pub channel: String,
    pub limit: i32,
    pub since: Option<StreamPosition>,
    pub reverse: bool,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct SendRequest {
    pub data: Option<Raw>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct RpcRequest {
    pub data: Option<Raw>,
    pub method: String,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct RefreshRequest {
    pub token: String,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct SubRefreshRequest {
    pub channel: String,
    pub token: String,
}
