//! Results of commands and pushes the server sends, in a format-independent
//! shape; [`crate::json`] turns them into bytes. Zero values are omitted on the
//! wire, as the protocol's JSON form expects.

use std::collections::BTreeMap;
use std::sync::Arc;

use bytes::Bytes;

use crate::model::{ClientInfo, Publication};

/// What a successful command returns.
#[derive(Debug)]
pub enum ReplyBody {
    Connect(ConnectResult),
    Subscribe(SubscribeResult),
    Unsubscribe,
    Publish,
    Presence(BTreeMap<String, Arc<ClientInfo>>),
    PresenceStats { num_clients: u32, num_users: u32 },
    History(HistoryResult),
    Ping,
    Rpc(Option<Bytes>),
    Refresh(RefreshResult),
    SubRefresh(SubRefreshResult),
}

#[derive(Debug, Default)]
pub struct ConnectResult {
    pub client: String,
    pub version: String,
    pub expires: bool,
    pub ttl: u32,
    pub data: Option<Bytes>,
    /// Server-side subscriptions, by channel.
    pub subs: Vec<(String, SubscribeResult)>,
    pub ping: u32,
    pub pong: bool,
    /// An emulated connection's session (HTTP-streaming, SSE): what its
    /// client names in emulation requests, with `node`.
    pub session: String,
    pub node: String,
    pub time: i64,
}

#[derive(Debug, Default)]
pub struct SubscribeResult {
    pub expires: bool,
    pub ttl: u32,
    pub recoverable: bool,
    pub epoch: String,
    pub publications: Vec<Arc<Publication>>,
    pub recovered: bool,
    pub offset: u64,
    pub positioned: bool,
    pub data: Option<Bytes>,
    pub was_recovering: bool,
    /// Publications come as Fossil deltas where they can (`delta: "fossil"`
    /// was asked and allowed); their data are then JSON strings in JSON.
    pub delta: bool,
}

#[derive(Debug, Default)]
pub struct HistoryResult {
    pub publications: Vec<Arc<Publication>>,
    pub epoch: String,
    pub offset: u64,
}

#[derive(Debug, Default)]
pub struct RefreshResult {
    pub client: String,
    pub version: String,
    pub expires: bool,
    pub ttl: u32,
}

#[derive(Debug, Default)]
pub struct SubRefreshResult {
    pub expires: bool,
    pub ttl: u32,
}

/// Asynchronous messages from the server that are not replies to a command
/// (publications and join/leave events have their own encoders, since they
/// are encoded once for many receivers).
#[derive(Debug)]
pub enum Push {
    Unsubscribe {
        channel: String,
        code: u32,
        reason: String,
    },
    Message {
        data: Bytes,
    },
    Subscribe {
        channel: String,
        result: SubscribeResult,
    },
    Disconnect {
        code: u16,
        reason: String,
        reconnect: bool,
    },
    Refresh {
        expires: bool,
        ttl: u32,
    },
}
