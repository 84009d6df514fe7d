//! A Pusher socket (`/app/{key}`, protocol 7): `pusher:connection_established`,
//! ping and pong, subscriptions to public, private, encrypted and presence
//! channels with their signatures, client events, user sign-in, and the
//! protocol's errors and close codes. The socket is a hub [`Client`]; it
//! joins channels, presence and the broker as a Centrifugo session does.

use std::sync::atomic::Ordering;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use axum::extract::{Path, Query, State};
use axum::http::HeaderMap;
use axum::response::Response;
use axum::Extension;
use futures_util::{SinkExt, StreamExt};
use herald_protocol::{ClientInfo, PresenceEvent, Publication};
use parking_lot::Mutex;
use serde::Deserialize;
use serde_json::{json, Value};
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::Message;

mod cache;
mod channels;
mod online;
mod serve;

use super::members::Members;
use super::watchlist::Watch;
use super::{message, App, Apps, Kind, Pusher, EXCLUDED_SOCKET};
use crate::channel::map::ChannelMap;
use crate::frame::Frame;
use crate::hub::{Client, Control};
use crate::metrics::Counters;
use crate::node::Node;
use crate::ratelimit::Bucket;
use crate::session::Outbox;
use crate::transport::upgrade::{Socket, Upgrade};
use crate::transport::websocket;

/// The protocol versions pusher-js speaks (7) and the oldest still taken.
const PROTOCOLS: std::ops::RangeInclusive<u32> = 5..=7;

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
    if let Some(refused) = crate::transport::admission::refusal(&node, &headers, ws.peer()) {
        return refused;
    }
    let app = apps.by_key.get(&key).cloned();
    let protocol = opening.protocol.as_deref().and_then(|p| p.parse().ok());
    let limit = node.config.websocket.message_size_limit;
    let config = websocket::socket_config(&node, limit);
    let compression = websocket::websocket_compression(&node);
    ws.accept(config, compression, move |socket| {
        run(node, app, protocol, socket)
    })
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
    /// Cache channels waiting for their first event.
    cache: cache::Awaiting,
    /// The users it watches, once signed in with a watchlist (boxed: most
    /// sockets have none).
    watch: OnceLock<Box<Watch>>,
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
            self.cache.push_live(publication, frame, &self.outbox);
        }
    }
    fn deliver_presence(&self, event: &Arc<PresenceEvent>) {
        if let Some(watch) = self.watch.get() {
            watch.event(event, &self.outbox);
        }
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
    /// When the last subscription count told was made (Unix ms).
    counted_at: i64,
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

/// The socket's task. Not an `async fn`: its arguments would be stored twice in the future
/// (as arguments and as locals), the socket among them.
#[allow(clippy::manual_async_fn)]
fn run(
    node: Arc<Node>,
    app: Option<Arc<App>>,
    protocol: Option<u32>,
    mut socket: Socket,
) -> impl std::future::Future<Output = ()> {
    async move {
        Counters::incr(&node.counters.connections_accepted);
        let _guard = node.tracker().token();
        let Some(app) = app else {
            let why = "App key not in this cluster: check the key in your client's options";
            return Box::pin(refuse(&mut socket, code::UNKNOWN_APP, why, &node)).await;
        };
        let Some(protocol) = protocol else {
            let why = "No protocol version supplied: add ?protocol=7";
            return Box::pin(refuse(&mut socket, code::NO_PROTOCOL, why, &node)).await;
        };
        if !PROTOCOLS.contains(&protocol) {
            let why = "Unsupported protocol version: use protocol 7 (pusher-js 8)";
            return Box::pin(refuse(&mut socket, code::UNSUPPORTED_PROTOCOL, why, &node)).await;
        }
        let max = app.cfg.max_connections;
        let held = app.connections.fetch_add(1, Ordering::AcqRel);
        let _slot = Slot(app.clone());
        if max > 0 && held >= max {
            let why = "Over capacity: the app has its most connections";
            return Box::pin(refuse(&mut socket, code::OVER_CAPACITY, why, &node)).await;
        }
        let key = node.next_key();
        let conn = Arc::new(Conn {
            key,
            id: Arc::from(format!("{}.{key}", rand_part())),
            user: OnceLock::new(),
            outbox: Arc::new(Outbox::new(node.config.client.queue_max_size)),
            members: Mutex::default(),
            cache: cache::Awaiting::default(),
            watch: OnceLock::new(),
        });
        let cfg = &node.config.client;
        if node
            .hub
            .add_client(conn.clone(), cfg.connection_limit, 0)
            .is_err()
        {
            let why = "Over capacity: this node has its most connections";
            return Box::pin(refuse(&mut socket, code::OVER_CAPACITY, why, &node)).await;
        }
        let now = Instant::now();
        let mut s = Link {
            node: node.clone(),
            conn: conn.clone(),
            subs: ChannelMap::default(),
            online: None,
            messages: Bucket::full(app.cfg.max_messages_per_second, now),
            client_events: Bucket::full(app.cfg.max_client_events_per_second, now),
            app,
        };
        // Made in a block of its own, so that its text is not kept in the
        // task while the socket is served.
        let established = {
            let data = json!({
                "socket_id": &*conn.id,
                "activity_timeout": s.app.cfg.activity_timeout.0.as_secs(),
            })
            .to_string();
            message("pusher:connection_established", None, &data, None)
        };
        let end = match send(&mut socket, established).await {
            Ok(()) => s.serve(&mut socket).await,
            Err(()) => None,
        };
        let channels: Vec<String> = s.subs.channels().map(str::to_string).collect();
        for channel in channels {
            Box::pin(s.leave(&channel)).await;
        }
        Box::pin(s.sign_out()).await;
        node.hub.remove_client(&*conn);
        if let Some(close) = end {
            // Errors the client must not retry after are told as such first
            // (a WebSocket-level close, such as 1009, only by its code).
            let tell = (4000..4100).contains(&close.0);
            Box::pin(finish(&mut socket, close, tell, &node)).await;
        }
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

/// Refuses a socket: `pusher:error` and the close with `code`.
async fn refuse(socket: &mut Socket, code: u16, why: &str, node: &Node) {
    finish(socket, Close::new(code, why), true, node).await;
}

/// Tells the client why with `pusher:error` (when `tell`), sends the
/// close frame within `websocket.write_timeout`, and reads until the
/// client's close, for a moment.
async fn finish(socket: &mut Socket, close: Close, tell: bool, node: &Node) {
    let Close(code, reason) = close;
    let sent = async {
        if tell {
            let error = json!({"code": code, "message": &reason}).to_string();
            send(socket, message("pusher:error", None, &error, None)).await?;
        }
        let frame = CloseFrame {
            code: CloseCode::from(code),
            reason: reason.chars().take(100).collect::<String>().into(),
        };
        socket.close(Some(frame)).await.map_err(|_| ())
    };
    let limit = node.config.websocket.write_timeout.0;
    if let Ok(Ok(())) = tokio::time::timeout(limit, sent).await {
        let _ = tokio::time::timeout(Duration::from_secs(1), async {
            while let Some(Ok(_)) = socket.next().await {}
        })
        .await;
    }
}

/// The socket's state in its task.
struct Link {
    node: Arc<Node>,
    app: Arc<App>,
    conn: Arc<Conn>,
    /// By Pusher channel name.
    subs: ChannelMap<Sub>,
    /// Its presence in its user's online channel, when signed in to an
    /// app with watchlist events (boxed: most sockets are not).
    online: Option<Box<online::Online>>,
    /// `max_messages_per_second` and `max_client_events_per_second`.
    messages: Bucket,
    client_events: Bucket,
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
                    // Boxed: the one control that awaits much, so that the
                    // others (counts, access checks) allocate nothing.
                    Box::pin(self.leave(&name)).await;
                }
                None
            }
            // Herald's server API blocked the signed-in user
            // (`pusher:<app id>:<user id>`).
            Control::CheckAccess => {
                let user = self.conn.user();
                let blocked =
                    !user.is_empty() && self.node.access.check_connection(user, None).is_err();
                blocked.then(|| Close::new(code::UNAUTHORIZED, "The user is blocked"))
            }
            Control::Count { channel, count, at } => {
                let name = channel.strip_prefix(&self.app.prefix)?;
                let sub = self.subs.get_mut(name)?;
                // A count made before the last one told is older news.
                if self.app.counter.is_none() || at < sub.counted_at {
                    return None;
                }
                sub.counted_at = at;
                let data = json!({ "subscription_count": count }).to_string();
                self.push("pusher_internal:subscription_count", Some(name), &data);
                None
            }
            _ => None,
        }
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
            "pusher:signin" => self.sign_in(&m.data).await?,
            event if event.starts_with("client-") => {
                self.client_event(event, m.channel.as_deref(), &m.data)
                    .await
            }
            // Events of later protocol versions and of other servers.
            _ => {}
        }
        Ok(())
    }
}
