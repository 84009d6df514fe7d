//! A Pusher socket (`/app/{key}`, protocol 7): `pusher:connection_established`,
//! ping and pong, subscriptions to public, private, encrypted and presence
//! channels with their signatures, client events, user sign-in, and the
//! protocol's errors and close codes. The socket is a hub [`Client`]; it
//! joins channels, presence and the broker as a Centrifugo session does.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::Ordering;
use std::sync::{Arc, OnceLock};
use std::task::Poll;
use std::time::Duration;

use axum::extract::{Path, Query, State};
use axum::http::HeaderMap;
use axum::response::Response;
use axum::Extension;
use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use herald_protocol::{ClientInfo, PresenceEvent, Publication};
use parking_lot::Mutex;
use serde::Deserialize;
use serde_json::{json, Value};
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::Message;

use super::members::Members;
use super::{message, sign, valid_channel, App, Apps, Kind, Pusher, EXCLUDED_SOCKET};
use crate::frame::Frame;
use crate::hub::{Client, Control};
use crate::metrics::Counters;
use crate::node::{Node, PublishOptions};
use crate::ratelimit::Bucket;
use crate::session::{Item, Outbox};
use crate::transport::upgrade::{Socket, Upgrade};

/// The protocol versions pusher-js speaks (7) and the oldest still taken.
const PROTOCOLS: std::ops::RangeInclusive<u32> = 5..=7;

/// How long a socket that was sent `pusher:ping` has to answer, at most
/// (never longer than the app's `activity_timeout`).
const PONG_TIMEOUT: Duration = Duration::from_secs(30);

/// Pusher's close codes (4000–4099: do not reconnect; 4100–4199: reconnect
/// later; 4200–4299: reconnect now).
mod code {
    pub const UNKNOWN_APP: u16 = 4001;
    pub const UNSUPPORTED_PROTOCOL: u16 = 4007;
    pub const NO_PROTOCOL: u16 = 4008;
    pub const UNAUTHORIZED: u16 = 4009;
    pub const OVER_CAPACITY: u16 = 4100;
    pub const RECONNECT: u16 = 4200;
    pub const PONG_TIMEOUT: u16 = 4201;
    /// `pusher:error` for a message over a rate limit.
    pub const RATE_LIMITED: u16 = 4301;
}

/// The longest presence user id Pusher takes.
const MAX_USER_ID: usize = 128;

#[derive(Deserialize)]
pub(super) struct Opening {
    protocol: Option<String>,
}

pub(super) async fn upgrade(
    State(node): State<Arc<Node>>,
    Extension(apps): Extension<Arc<Apps>>,
    Path(key): Path<String>,
    Query(opening): Query<Opening>,
    headers: HeaderMap,
    ws: Upgrade,
) -> Response {
    if let Some(refused) = crate::transport::websocket::refusal(&node, &headers, ws.peer()) {
        return refused;
    }
    let app = apps.by_key.get(&key).cloned();
    let protocol = opening.protocol.as_deref().and_then(|p| p.parse().ok());
    let limit = node.config.websocket.message_size_limit;
    let config = crate::transport::websocket::socket_config(&node, limit);
    ws.accept(config, move |socket| run(node, app, protocol, socket))
}

/// Why the server ends a socket: a Pusher close code and reason.
struct Close(u16, String);

impl Close {
    fn new(code: u16, reason: impl Into<String>) -> Self {
        Self(code, reason.into())
    }
}

/// The socket as the hub sees it.
struct Conn {
    key: u64,
    id: Arc<str>,
    /// The user it signed in as (`pusher:signin`); none before.
    user: OnceLock<String>,
    outbox: Arc<Outbox>,
    members: Mutex<Members>,
}

impl Client for Conn {
    fn key(&self) -> u64 {
        self.key
    }
    fn client_id(&self) -> &str {
        &self.id
    }
    fn shared_id(&self) -> Arc<str> {
        self.id.clone()
    }
    fn user(&self) -> &str {
        self.user.get().map_or("", String::as_str)
    }
    fn transport(&self) -> &'static str {
        "pusher"
    }
    fn protocol(&self) -> &'static str {
        "pusher"
    }
    fn deliver(&self, publication: &Arc<Publication>) {
        if publication.tags.get(EXCLUDED_SOCKET).map(String::as_str) == Some(&*self.id) {
            return;
        }
        if let Some(frame) = publication.frame::<Pusher>() {
            self.outbox.push_frame(frame);
        }
    }
    fn deliver_presence(&self, event: &Arc<PresenceEvent>) {
        let mut members = self.members.lock();
        if members.event(event, &self.id) {
            if let Some(frame) = event.frame::<Pusher>() {
                self.outbox.push_frame(frame);
            }
        }
    }
    fn control(&self, control: Control) {
        self.outbox.push_control(control);
    }
}

/// One subscription of the socket.
struct Sub {
    /// The Herald channel.
    channel: String,
    kind: Kind,
    /// The member it is in a presence channel.
    member: Option<Arc<ClientInfo>>,
}

/// A message from the client.
#[derive(Deserialize)]
struct Incoming {
    event: String,
    #[serde(default)]
    data: Value,
    #[serde(default)]
    channel: Option<String>,
}

/// Gives the app's connection slot back when the socket ends.
struct Slot(Arc<App>);

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.connections.fetch_sub(1, Ordering::AcqRel);
    }
}

/// The socket's task.
async fn run(node: Arc<Node>, app: Option<Arc<App>>, protocol: Option<u32>, mut socket: Socket) {
    Counters::incr(&node.counters.connections_accepted);
    let _guard = node.tracker().token();
    let Some(app) = app else {
        let why = "App key not in this cluster: check the key in your client's options";
        return refuse(&mut socket, Close::new(code::UNKNOWN_APP, why)).await;
    };
    let Some(protocol) = protocol else {
        let why = "No protocol version supplied: add ?protocol=7";
        return refuse(&mut socket, Close::new(code::NO_PROTOCOL, why)).await;
    };
    if !PROTOCOLS.contains(&protocol) {
        let why = "Unsupported protocol version: use protocol 7 (pusher-js 8)";
        return refuse(&mut socket, Close::new(code::UNSUPPORTED_PROTOCOL, why)).await;
    }
    let max = app.cfg.max_connections;
    let held = app.connections.fetch_add(1, Ordering::AcqRel);
    let _slot = Slot(app.clone());
    if max > 0 && held >= max {
        let why = "Over capacity: the app has its most connections";
        return refuse(&mut socket, Close::new(code::OVER_CAPACITY, why)).await;
    }
    let key = node.next_key();
    let conn = Arc::new(Conn {
        key,
        id: Arc::from(format!("{}.{key}", rand_part())),
        user: OnceLock::new(),
        outbox: Arc::new(Outbox::new(node.config.client.queue_max_size)),
        members: Mutex::default(),
    });
    let cfg = &node.config.client;
    if node
        .hub
        .add_client(conn.clone(), cfg.connection_limit, 0)
        .is_err()
    {
        let why = "Over capacity: this node has its most connections";
        return refuse(&mut socket, Close::new(code::OVER_CAPACITY, why)).await;
    }
    let now = Instant::now();
    let mut s = Link {
        node: node.clone(),
        conn: conn.clone(),
        subs: HashMap::new(),
        messages: Bucket::full(app.cfg.max_messages_per_second, now),
        client_events: Bucket::full(app.cfg.max_client_events_per_second, now),
        app,
    };
    let established = json!({
        "socket_id": &*conn.id,
        "activity_timeout": s.app.cfg.activity_timeout.0.as_secs(),
    })
    .to_string();
    let end = match send(
        &mut socket,
        message("pusher:connection_established", None, &established, None),
    )
    .await
    {
        Ok(()) => s.serve(&mut socket).await,
        Err(()) => None,
    };
    let channels: Vec<String> = s.subs.keys().cloned().collect();
    for channel in channels {
        s.leave(&channel).await;
    }
    node.hub.remove_client(&*conn);
    if let Some(close) = end {
        if close.0 < 4100 {
            let error = json!({"code": close.0, "message": &close.1}).to_string();
            let _ = send(&mut socket, message("pusher:error", None, &error, None)).await;
        }
        finish(&mut socket, close).await;
    }
}

/// A socket id's first part: random, so that ids do not repeat across
/// restarts.
fn rand_part() -> u32 {
    uuid::Uuid::new_v4().as_u128() as u32 % 1_000_000_000
}

async fn send(socket: &mut Socket, frame: Option<Frame>) -> Result<(), ()> {
    let Some(Frame::Text(text) | Frame::Whole(text)) = frame else {
        return Ok(());
    };
    socket.send(Message::Text(text)).await.map_err(|_| ())
}

/// Tells the client why with `pusher:error`, then closes.
async fn refuse(socket: &mut Socket, close: Close) {
    let error = json!({"code": close.0, "message": &close.1}).to_string();
    let _ = send(socket, message("pusher:error", None, &error, None)).await;
    finish(socket, close).await;
}

/// Sends the close frame and reads until the client's, for a moment.
async fn finish(socket: &mut Socket, Close(code, reason): Close) {
    let frame = CloseFrame {
        code: CloseCode::from(code),
        reason: reason.chars().take(100).collect::<String>().into(),
    };
    let _ = socket.close(Some(frame)).await;
    let _ = tokio::time::timeout(Duration::from_secs(1), async {
        while let Some(Ok(_)) = socket.next().await {}
    })
    .await;
}

/// The socket's state in its task.
struct Link {
    node: Arc<Node>,
    app: Arc<App>,
    conn: Arc<Conn>,
    /// By Pusher channel name.
    subs: HashMap<String, Sub>,
    /// `max_messages_per_second` and `max_client_events_per_second`.
    messages: Bucket,
    client_events: Bucket,
}

/// What woke the socket's task.
enum Wake {
    Shutdown,
    Outbox,
    Inbound(Option<Result<Message, tokio_tungstenite::tungstenite::Error>>),
    Idle,
}

impl Link {
    fn push(&self, event: &str, channel: Option<&str>, data: &str) {
        if let Some(frame) = message(event, channel, data, None) {
            self.conn.outbox.push_frame(frame);
        }
    }

    fn error(&self, code: Option<u16>, text: &str) {
        let data = json!({"code": code, "message": text}).to_string();
        self.push("pusher:error", None, &data);
    }

    /// Runs until the socket ends; the close to send, if the server ends it.
    async fn serve(&mut self, socket: &mut Socket) -> Option<Close> {
        let outbox = self.conn.outbox.clone();
        let mut items = VecDeque::new();
        let activity = self.app.cfg.activity_timeout.0;
        let pong_timeout = PONG_TIMEOUT.min(activity);
        let mut heard = Instant::now();
        let mut pinged: Option<Instant> = None;
        loop {
            let deadline = match pinged {
                Some(at) => at + pong_timeout,
                None => heard + activity,
            };
            let wake = tokio::select! {
                _ = self.node.shutdown().cancelled() => Wake::Shutdown,
                _ = std::future::poll_fn(|cx| if outbox.wakes(cx).queued { Poll::Ready(()) } else { Poll::Pending }) => Wake::Outbox,
                m = socket.next() => Wake::Inbound(m),
                _ = tokio::time::sleep_until(deadline) => Wake::Idle,
            };
            match wake {
                Wake::Shutdown => {
                    return Some(Close::new(
                        code::RECONNECT,
                        "Server shutting down: reconnect",
                    ))
                }
                Wake::Idle if pinged.is_some() => {
                    return Some(Close::new(
                        code::PONG_TIMEOUT,
                        "Pong reply not received in time",
                    ))
                }
                Wake::Idle => {
                    pinged = Some(Instant::now());
                    self.push("pusher:ping", None, "{}");
                }
                Wake::Inbound(None | Some(Err(_))) => return None,
                Wake::Inbound(Some(Ok(m))) => {
                    heard = Instant::now();
                    pinged = None;
                    match m {
                        Message::Text(text) => {
                            Counters::incr(&self.node.counters.messages_in);
                            Counters::add(&self.node.counters.bytes_in, text.len() as u64);
                            if let Err(close) = self.handle(text.as_str()).await {
                                return Some(close);
                            }
                        }
                        Message::Binary(_) => self.error(None, "Messages are JSON text"),
                        Message::Close(_) => return None,
                        _ => {}
                    }
                }
                Wake::Outbox => {}
            }
            if outbox.drain(&mut items) {
                Counters::incr(&self.node.counters.slow_disconnects);
                return Some(Close::new(
                    code::OVER_CAPACITY,
                    "Too slow: messages queued up",
                ));
            }
            for item in items.drain(..) {
                match item {
                    Item::Frame(frame) => {
                        Counters::incr(&self.node.counters.messages_out);
                        Counters::add(&self.node.counters.bytes_out, frame.len() as u64);
                        let (Frame::Text(text) | Frame::Whole(text)) = frame else {
                            continue;
                        };
                        if socket.feed(Message::Text(text)).await.is_err() {
                            return None;
                        }
                    }
                    Item::Control(control) => {
                        if let Some(close) = self.control(*control).await {
                            return Some(close);
                        }
                    }
                }
            }
            if socket.flush().await.is_err() {
                return None;
            }
        }
    }

    async fn control(&mut self, control: Control) -> Option<Close> {
        match control {
            // Herald's reconnect codes (3000–3499) let pusher-js come back
            // at once; the others end the socket for good.
            Control::Disconnect(d) if d.code < 3500 => Some(Close::new(code::RECONNECT, d.reason)),
            Control::Disconnect(d) => Some(Close::new(code::UNAUTHORIZED, d.reason)),
            Control::Unsubscribe { channel, code, .. } => {
                let name = channel.strip_prefix(&self.app.prefix)?.to_string();
                if code == herald_protocol::codes::unsubscribe::INSUFFICIENT.0 {
                    // Live delivery broke off (a new stream epoch, a broker
                    // reconnect): Pusher has no recovery, so the socket
                    // stays subscribed, and in presence, as it was.
                    self.rejoin(&name);
                } else {
                    self.leave(&name).await;
                }
                None
            }
            _ => None,
        }
    }

    /// Subscribes again in the hub (a stale subscription gets nothing
    /// more), keeping presence and the socket's own state.
    fn rejoin(&mut self, name: &str) {
        let Some(sub) = self.subs.get(name) else {
            return;
        };
        self.node.hub.unsubscribe(&sub.channel, self.conn.key);
        let client: Arc<dyn Client> = self.conn.clone();
        self.node
            .hub
            .subscribe(&sub.channel, client, sub.member.is_some());
    }

    /// One message from the client.
    async fn handle(&mut self, text: &str) -> Result<(), Close> {
        let (rate, now) = (self.app.cfg.max_messages_per_second, Instant::now());
        if rate > 0 && !self.messages.take(rate, now) {
            self.error(Some(code::RATE_LIMITED), "Too many messages: slow down");
            return Ok(());
        }
        let Ok(m) = serde_json::from_str::<Incoming>(text) else {
            self.error(None, "Messages are JSON objects with an event");
            return Ok(());
        };
        match m.event.as_str() {
            "pusher:ping" => self.push("pusher:pong", None, "{}"),
            "pusher:pong" => {}
            "pusher:subscribe" => self.subscribe(&m.data).await,
            "pusher:unsubscribe" => {
                if let Some(channel) = m.data.get("channel").and_then(Value::as_str) {
                    let channel = channel.to_string();
                    self.leave(&channel).await;
                }
            }
            "pusher:signin" => self.sign_in(&m.data)?,
            event if event.starts_with("client-") => {
                self.client_event(event, m.channel.as_deref(), &m.data)
                    .await
            }
            // Events of later protocol versions and of other servers.
            _ => {}
        }
        Ok(())
    }

    fn refuse_subscription(&self, channel: &str, status: u16, why: &str) {
        let data = json!({"type": "AuthError", "error": why, "status": status}).to_string();
        self.push("pusher:subscription_error", Some(channel), &data);
    }

    async fn subscribe(&mut self, data: &Value) {
        let Some(name) = data.get("channel").and_then(Value::as_str) else {
            return self.error(None, "pusher:subscribe needs a channel");
        };
        match name.strip_prefix(super::USER_CHANNEL) {
            // A signed-in user's own channel (`sendToUser`), nobody else's.
            Some(user) if user.is_empty() || user != self.signed_in() => {
                let why = "Only the signed-in user's own #server-to-user- channel";
                return self.refuse_subscription(name, 403, why);
            }
            Some(_) => {}
            None if !valid_channel(name) => {
                let why = "Invalid channel name: up to 164 of A-Z a-z 0-9 _ - = @ , . ;";
                return self.refuse_subscription(name, 400, why);
            }
            None => {}
        }
        if self.subs.contains_key(name) {
            return;
        }
        if self.subs.len() >= self.node.config.client.channel_limit {
            return self.refuse_subscription(name, 429, "Too many channels on one connection");
        }
        let kind = Kind::of(name);
        let channel_data = data.get("channel_data").and_then(Value::as_str);
        if kind.authorized() {
            let auth = data.get("auth").and_then(Value::as_str).unwrap_or_default();
            let data = channel_data.filter(|_| kind == Kind::Presence);
            if !sign::channel(&self.app.cfg, auth, &self.conn.id, name, data) {
                return self.refuse_subscription(
                    name,
                    401,
                    "Invalid signature: check the app key and secret of your auth endpoint",
                );
            }
        }
        let member = if kind == Kind::Presence {
            match member(&self.conn.id, channel_data) {
                Some(m) => Some(m),
                None => {
                    let why = "Presence channels need channel_data with a user_id";
                    return self.refuse_subscription(name, 400, why);
                }
            }
        } else {
            None
        };
        let channel = self.app.channel(name);
        if self.node.rules.resolve(&channel).is_err() {
            return self.refuse_subscription(name, 400, "The app's namespace refuses this channel");
        }
        if let Some(info) = &member {
            let size = info.chan_info.as_ref().map_or(0, |b| b.len());
            if info.user.len() > MAX_USER_ID || size > self.app.cfg.max_presence_member_size {
                let why = "Presence member too large: user_id up to 128 characters, user_info up to max_presence_member_size bytes";
                return self.refuse_subscription(name, 400, why);
            }
            let users = self
                .node
                .presence_stats(&channel)
                .await
                .map_or(0, |(_, u)| u);
            if users as usize >= self.app.cfg.max_presence_members {
                return self.refuse_subscription(
                    name,
                    400,
                    "Presence channel full (max_presence_members)",
                );
            }
        }
        if member.is_some() {
            self.conn.members.lock().start(&channel);
        }
        let client: Arc<dyn Client> = self.conn.clone();
        if self.node.hub.subscribe(&channel, client, member.is_some()) {
            self.node.broker_sync(&channel).await;
        }
        self.subs.insert(
            name.to_string(),
            Sub {
                channel: channel.clone(),
                kind,
                member: member.clone(),
            },
        );
        let Some(info) = member else {
            return self.push("pusher_internal:subscription_succeeded", Some(name), "{}");
        };
        self.node.presence().add(&channel, info.clone()).await;
        self.node.presence_event(&channel, info.clone(), true).await;
        let mut snapshot = self.node.presence_get(&channel).await.unwrap_or_default();
        snapshot.insert(info.client.clone(), info);
        let mut members = self.conn.members.lock();
        let (data, tell) = members.loaded(&channel, &snapshot, &self.conn.id);
        self.push("pusher_internal:subscription_succeeded", Some(name), &data);
        for event in tell {
            if let Some(frame) = event.frame::<Pusher>() {
                self.conn.outbox.push_frame(frame);
            }
        }
    }

    async fn leave(&mut self, name: &str) {
        let Some(sub) = self.subs.remove(name) else {
            return;
        };
        if self.node.hub.unsubscribe(&sub.channel, self.conn.key) {
            self.node.broker_sync(&sub.channel).await;
        }
        if let Some(info) = sub.member {
            self.conn.members.lock().leave(&sub.channel);
            self.node
                .presence()
                .remove(&sub.channel, &self.conn.id)
                .await;
            self.node.presence_event(&sub.channel, info, false).await;
        }
    }

    /// The id the socket signed in with (none: empty).
    fn signed_in(&self) -> &str {
        let user = self.conn.user();
        let prefix = super::hub_user(&self.app.cfg.id, "");
        user.strip_prefix(&prefix).unwrap_or(user)
    }

    fn sign_in(&mut self, data: &Value) -> Result<(), Close> {
        let auth = data.get("auth").and_then(Value::as_str).unwrap_or_default();
        let user_data = data
            .get("user_data")
            .and_then(Value::as_str)
            .unwrap_or_default();
        if !sign::user(&self.app.cfg, auth, &self.conn.id, user_data) {
            return Err(Close::new(
                code::UNAUTHORIZED,
                "Invalid signature for pusher:signin",
            ));
        }
        let id = serde_json::from_str::<Value>(user_data)
            .ok()
            .and_then(|v| user_id(v.get("id")?));
        let Some(id) = id else {
            return Err(Close::new(code::UNAUTHORIZED, "user_data needs an id"));
        };
        if self.conn.user.get().is_some() {
            self.error(None, "Already signed in");
            return Ok(());
        }
        // Registered again under the user, so that the user's connections
        // can be found (terminate_connections) on any node.
        self.node.hub.remove_client(&*self.conn);
        let _ = self.conn.user.set(super::hub_user(&self.app.cfg.id, &id));
        let limit = self.node.config.client.user_connection_limit;
        if self
            .node
            .hub
            .add_client(self.conn.clone(), 0, limit)
            .is_err()
        {
            return Err(Close::new(
                code::OVER_CAPACITY,
                "The user has its most connections",
            ));
        }
        let data = json!({ "user_data": user_data }).to_string();
        self.push("pusher:signin_success", None, &data);
        Ok(())
    }

    async fn client_event(&mut self, event: &str, name: Option<&str>, data: &Value) {
        if !self.app.cfg.enable_client_messages {
            return self.error(
                None,
                "Client events are not enabled for this app (enable_client_messages)",
            );
        }
        let Some(sub) = name.and_then(|n| self.subs.get(n)) else {
            return self.error(
                None,
                "Client events go to a channel the socket is subscribed to",
            );
        };
        if !matches!(sub.kind, Kind::Private | Kind::Presence) {
            return self.error(
                None,
                "Client events go only to private and presence channels",
            );
        }
        let body = json!({ "event": event, "data": data }).to_string();
        if data.to_string().len() > self.app.cfg.max_event_size {
            return self.error(None, "Client event rejected: data over max_event_size");
        }
        let (rate, now) = (self.app.cfg.max_client_events_per_second, Instant::now());
        if rate > 0 && !self.client_events.take(rate, now) {
            return self.error(
                Some(code::RATE_LIMITED),
                "Client event rejected due to rate limit",
            );
        }
        let info = sub.member.clone().unwrap_or_else(|| {
            Arc::new(ClientInfo {
                user: self.signed_in().to_string(),
                client: self.conn.id.to_string(),
                conn_info: None,
                chan_info: None,
            })
        });
        let options = PublishOptions {
            info: Some(info),
            tags: [(EXCLUDED_SOCKET.to_string(), self.conn.id.to_string())].into(),
            // Client events are relayed, never kept (as with Pusher).
            skip_history: true,
            ..Default::default()
        };
        let channel = sub.channel.clone();
        if let Err(e) = self
            .node
            .publish(&channel, Bytes::from(body), options)
            .await
        {
            self.error(None, &format!("Client event not published: {}", e.message));
        }
    }
}

/// A presence member from `channel_data`: `user_id` (a string or number)
/// and `user_info`.
fn member(socket: &str, channel_data: Option<&str>) -> Option<Arc<ClientInfo>> {
    let v: Value = serde_json::from_str(channel_data?).ok()?;
    let user = user_id(v.get("user_id")?)?;
    let info = v.get("user_info").map(|i| Bytes::from(i.to_string()));
    Some(Arc::new(ClientInfo {
        user,
        client: socket.to_string(),
        conn_info: None,
        chan_info: info,
    }))
}

/// A user id as Pusher takes it: a non-empty string or a number.
fn user_id(v: &Value) -> Option<String> {
    match v {
        Value::String(s) if !s.is_empty() => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}
