//! One client connection's protocol state: commands in, replies and pushes
//! out through the connection's [`Outbox`], timers for pings, pongs, token
//! expiry and the connect deadline. Transports feed it frames and run its
//! timers; it never touches a socket itself.

mod commands;
mod connect;
mod outbox;
mod subs;
mod subscribe;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use herald_protocol::json::{self, DecodeError};
use herald_protocol::reply::{Push, ReplyBody};
use herald_protocol::{Disconnect, Method, ProtocolError, Publication};
use parking_lot::Mutex;
use tokio::time::Instant;

pub use outbox::{Item, Outbox};

use crate::auth::now_unix;
use crate::hub::{self, Client, Control, Frame};
use crate::node::{Counters, Node};

/// The part of a connected session the hub holds: identity and outbox.
pub struct Handle {
    key: u64,
    /// Shared with the session and the hub: one copy per connection.
    client_id: Arc<str>,
    user: String,
    outbox: Arc<Outbox>,
    /// Per-channel delivery guards while and just after a subscribe reads
    /// the channel's stream, so that nothing is lost or repeated around it;
    /// allocated only while there are any.
    guards: Mutex<Option<Box<Guards>>>,
    /// `guards` is in use; lets delivery skip the lock.
    guarded: AtomicBool,
}

#[derive(Default)]
struct Guards {
    /// Publications held back while the stream is being read.
    held: HashMap<Arc<str>, Vec<Arc<Publication>>>,
    /// The offset a subscribe reply gave: publications at or below it are
    /// already known to the client (a durable store may deliver a
    /// committed publication after a reader saw it), until one above passes.
    floors: HashMap<Arc<str>, u64>,
}

impl Guards {
    /// Whether the publication goes out now: one in a held channel is kept
    /// back, one at or below its channel's floor is dropped, and the first
    /// above the floor lifts it.
    fn admit(&mut self, publication: &Arc<Publication>) -> bool {
        let channel = &*publication.channel;
        if let Some(held) = self.held.get_mut(channel) {
            held.push(publication.clone());
            return false;
        }
        match self.floors.get(channel) {
            Some(&floor) if publication.offset <= floor => false,
            Some(_) => {
                self.floors.remove(channel);
                true
            }
            None => true,
        }
    }
}

impl Handle {
    fn new(key: u64, client_id: Arc<str>, user: String, outbox: Arc<Outbox>) -> Self {
        Self {
            key,
            client_id,
            user,
            outbox,
            guards: Mutex::default(),
            guarded: AtomicBool::new(false),
        }
    }

    fn start_buffering(&self, channel: &str) {
        let mut lock = self.guards.lock();
        let g = lock.get_or_insert_with(Box::default);
        g.held.insert(Arc::from(channel), Vec::new());
        self.guarded.store(true, Ordering::Release);
    }

    /// Ends buffering: queues the held publications newer than `after`,
    /// under the lock so later ones cannot overtake them, and keeps `after`
    /// as the channel's floor while none newer has passed.
    fn finish_buffering(&self, channel: &str, after: u64) {
        let mut lock = self.guards.lock();
        let Some(g) = lock.as_mut() else { return };
        let Some((key, held)) = g.held.remove_entry(channel) else {
            return;
        };
        let mut newer = held.iter().filter(|p| p.offset > after).peekable();
        if newer.peek().is_none() {
            g.floors.insert(key, after);
        }
        for frame in newer.filter_map(|p| hub::frame(p.json_push().clone())) {
            self.outbox.push_frame(frame);
        }
        self.release_if_unused(&mut lock);
    }

    /// Drops the channel's guards (on unsubscribe).
    fn forget(&self, channel: &str) {
        let mut lock = self.guards.lock();
        let Some(g) = lock.as_mut() else { return };
        g.held.remove(channel);
        g.floors.remove(channel);
        self.release_if_unused(&mut lock);
    }

    fn release_if_unused(&self, guards: &mut Option<Box<Guards>>) {
        if guards
            .as_ref()
            .is_some_and(|g| g.held.is_empty() && g.floors.is_empty())
        {
            *guards = None;
            self.guarded.store(false, Ordering::Release);
        }
    }
}

impl Client for Handle {
    fn key(&self) -> u64 {
        self.key
    }
    fn client_id(&self) -> &str {
        &self.client_id
    }
    fn shared_id(&self) -> Arc<str> {
        self.client_id.clone()
    }
    fn user(&self) -> &str {
        &self.user
    }
    fn deliver(&self, publication: &Arc<Publication>, frame: &Frame) {
        // While guards are in use, the frame is queued under their lock, so
        // that it cannot overtake held publications being released.
        let mut _guards = None;
        if self.guarded.load(Ordering::Acquire) {
            let mut lock = self.guards.lock();
            if let Some(g) = lock.as_mut() {
                if !g.admit(publication) {
                    return;
                }
                self.release_if_unused(&mut lock);
            }
            _guards = Some(lock);
        }
        // An overflow is noticed by the writer, which closes with 3008.
        self.outbox.push_frame(frame.clone());
    }
    fn deliver_presence(&self, frame: &Frame) {
        self.outbox.push_frame(frame.clone());
    }
    fn control(&self, control: Control) {
        self.outbox.push_control(control);
    }
}

/// Per-subscription state kept by the session.
#[derive(Debug, Default)]
struct SubState {
    /// Unix seconds when the subscription token expires.
    expires_at: Option<i64>,
    /// `info` from the subscription token, attached to the client's
    /// publications in this channel.
    chan_info: Option<Bytes>,
    /// This client is in the channel's presence set.
    presence: bool,
    /// The channel announces joins and leaves.
    join_leave: bool,
    /// Presence and the join event have been done (so leave must be too).
    announced: bool,
}

/// Identity after a successful connect.
struct Connected {
    handle: Arc<Handle>,
    /// `info` from the connection token (or the last refresh); a publication's
    /// or presence entry's `ClientInfo` is built from it when needed.
    conn_info: Option<Bytes>,
    expires_at: Option<i64>,
}

pub struct Session {
    node: Arc<Node>,
    outbox: Arc<Outbox>,
    client_id: Arc<str>,
    conn: Option<Connected>,
    subs: subs::Subs,
    connect_deadline: Option<Instant>,
    next_ping: Option<Instant>,
    pong_deadline: Option<Instant>,
}

impl Session {
    pub fn new(node: Arc<Node>) -> Self {
        let outbox = Arc::new(Outbox::new(node.config.client.queue_max_size));
        let stale = node.config.client.stale_close_delay.0;
        Self {
            outbox,
            client_id: Arc::from(uuid::Uuid::new_v4().to_string()),
            conn: None,
            subs: subs::Subs::default(),
            connect_deadline: (!stale.is_zero()).then(|| Instant::now() + stale),
            next_ping: None,
            pong_deadline: None,
            node,
        }
    }

    pub fn outbox(&self) -> &Arc<Outbox> {
        &self.outbox
    }

    pub fn client_id(&self) -> &str {
        &self.client_id
    }

    pub fn user(&self) -> Option<&str> {
        self.conn.as_ref().map(|c| c.handle.user.as_str())
    }

    /// Handles one transport frame of newline-separated commands.
    pub async fn handle_frame(&mut self, frame: &[u8]) -> Result<(), Disconnect> {
        let commands = json::decode_commands(frame).map_err(|e| {
            match e {
                DecodeError::NotUtf8 => {
                    tracing::info!(client = %self.client_id, "frame is not UTF-8")
                }
                DecodeError::Malformed(e) => {
                    tracing::info!(client = %self.client_id, error = %e, "malformed command")
                }
            }
            Disconnect::bad_request()
        })?;
        for command in commands {
            Counters::incr(&self.node.counters.commands);
            let (id, method) = command.into_method();
            self.dispatch(id, method).await?;
        }
        Ok(())
    }

    async fn dispatch(&mut self, id: u32, method: Method) -> Result<(), Disconnect> {
        if id == 0 {
            return match method {
                // The client's pong.
                Method::Empty => {
                    self.pong_deadline = None;
                    Ok(())
                }
                Method::Send(_) if self.conn.is_some() => Ok(()),
                _ => Err(Disconnect::bad_request()),
            };
        }
        if self.conn.is_none() && !matches!(method, Method::Connect(_)) {
            tracing::info!(client = %self.client_id, "command before connect");
            return Err(Disconnect::bad_request());
        }
        let result = match method {
            Method::Connect(req) => {
                if self.conn.is_some() {
                    return Err(Disconnect::bad_request());
                }
                return self.connect(id, req).await;
            }
            Method::Subscribe(req) => return self.subscribe(id, req).await,
            Method::Unsubscribe(req) => {
                self.unsubscribe(&req.channel).await;
                Ok(ReplyBody::Unsubscribe)
            }
            Method::Publish(req) => self.publish(req).await,
            Method::Presence(req) => self.presence(&req.channel, false).await,
            Method::PresenceStats(req) => self.presence(&req.channel, true).await,
            Method::History(req) => self.history(req).await,
            Method::Ping => Ok(ReplyBody::Ping),
            Method::Rpc(_) => Err(ProtocolError::METHOD_NOT_FOUND),
            Method::Refresh(req) => self.refresh(&req.token)?,
            Method::SubRefresh(req) => self.sub_refresh(&req.channel, &req.token).await?,
            Method::Send(_) | Method::Empty => Err(ProtocolError::BAD_REQUEST),
        };
        self.reply(id, result);
        Ok(())
    }

    fn reply(&self, id: u32, result: Result<ReplyBody, ProtocolError>) {
        let bytes = match &result {
            Ok(body) => json::encode_reply(id, body),
            Err(e) => {
                tracing::debug!(client = %self.client_id, code = e.code, "command error");
                json::encode_error(id, e)
            }
        };
        self.queue(bytes);
    }

    fn push(&self, push: &Push) {
        self.queue(json::encode_push(push));
    }

    /// Queues an encoded reply or push. One that is not UTF-8 (a bug,
    /// logged by `hub::frame`) closes the connection with an internal error
    /// rather than leave the client waiting for it.
    fn queue(&self, bytes: Vec<u8>) {
        match hub::frame(bytes) {
            Some(frame) => {
                self.outbox.push_frame(frame);
            }
            None => self
                .outbox
                .push_control(Control::Disconnect(Disconnect::internal())),
        }
    }

    /// Acts on a request from outside the connection (server API).
    pub async fn handle_control(&mut self, control: Control) -> Result<(), Disconnect> {
        match control {
            Control::Disconnect(d) => return Err(d),
            Control::Unsubscribe {
                channel,
                code,
                reason,
            } => {
                self.end_subscription(&channel, (code, &reason)).await;
            }
            Control::Subscribe {
                channel,
                info,
                data,
                expire_at,
            } => {
                self.server_subscribe_push(channel, info, data, expire_at)
                    .await;
            }
            Control::Refresh {
                expired,
                expire_at,
                info,
            } => {
                if expired {
                    return Err(Disconnect::expired());
                }
                if let Some(conn) = self.conn.as_mut() {
                    conn.expires_at = expire_at;
                    if info.is_some() {
                        conn.conn_info = info;
                    }
                    let ttl = ttl_from(expire_at);
                    self.push(&Push::Refresh {
                        expires: expire_at.is_some(),
                        ttl,
                    });
                }
            }
            Control::Message(data) => self.push(&Push::Message { data }),
        }
        Ok(())
    }

    /// The earliest moment a timer needs attention.
    pub fn next_deadline(&self) -> Option<Instant> {
        let expiry = self
            .conn
            .as_ref()
            .and_then(|c| c.expires_at)
            .map(|t| deadline_at(t, self.node.config.client.expired_close_delay.0));
        let sub_expiry = self
            .subs
            .values()
            .filter_map(|s| s.expires_at)
            .min()
            .map(|t| deadline_at(t, self.node.config.client.expired_sub_close_delay.0));
        [
            self.connect_deadline,
            self.next_ping,
            self.pong_deadline,
            expiry,
            sub_expiry,
        ]
        .into_iter()
        .flatten()
        .min()
    }

    /// Runs the timers that are due.
    pub async fn on_deadline(&mut self) -> Result<(), Disconnect> {
        let now = Instant::now();
        if self.connect_deadline.is_some_and(|d| d <= now) {
            tracing::info!(client = %self.client_id, "no connect command in time");
            return Err(Disconnect::stale());
        }
        if self.pong_deadline.is_some_and(|d| d <= now) {
            return Err(Disconnect::no_pong());
        }
        if let Some(at) = self.next_ping.filter(|d| *d <= now) {
            self.outbox.push_frame(Frame::from_static(json::PING));
            let c = &self.node.config.client;
            if !c.pong_timeout.is_zero() && self.pong_deadline.is_none() {
                self.pong_deadline = Some(now + c.pong_timeout.0);
            }
            self.next_ping = Some(at + c.ping_interval.0);
        }
        let close_delay = self.node.config.client.expired_close_delay.0;
        if self
            .conn
            .as_ref()
            .and_then(|c| c.expires_at)
            .is_some_and(|t| is_due(t, close_delay))
        {
            return Err(Disconnect::expired());
        }
        let sub_delay = self.node.config.client.expired_sub_close_delay.0;
        let expired: Vec<String> = self
            .subs
            .iter()
            .filter(|(_, s)| s.expires_at.is_some_and(|t| is_due(t, sub_delay)))
            .map(|(ch, _)| ch.to_string())
            .collect();
        for channel in expired {
            self.end_subscription(&channel, herald_protocol::codes::unsubscribe::EXPIRED)
                .await;
        }
        Ok(())
    }

    /// Leaves the hub and every channel. Call once when the transport ends.
    pub async fn close(mut self) {
        let channels: Vec<String> = self.subs.channels().map(str::to_string).collect();
        for channel in channels {
            self.unsubscribe(&channel).await;
        }
        if let Some(conn) = self.conn.take() {
            self.node.hub.remove_client(&*conn.handle);
            tracing::debug!(client = %self.client_id, user = %conn.handle.user, "disconnected");
        }
    }
}

fn unix_millis() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// Time left until Unix second `unix` plus `delay` (zero when past).
fn due_in(unix: i64, delay: Duration) -> Duration {
    let target = unix
        .saturating_mul(1000)
        .saturating_add(delay.as_millis() as i64);
    Duration::from_millis((target - unix_millis()).max(0) as u64)
}

/// Whether that moment has come; a few milliseconds of slack keep a timer
/// that fires on the boundary from spinning.
fn is_due(unix: i64, delay: Duration) -> bool {
    due_in(unix, delay) <= Duration::from_millis(5)
}

/// The tokio instant at Unix second `unix` plus `delay`.
fn deadline_at(unix: i64, delay: Duration) -> Instant {
    Instant::now() + due_in(unix, delay)
}

/// Seconds left until `expires_at`, for `ttl` fields.
fn ttl_from(expires_at: Option<i64>) -> u32 {
    expires_at
        .map(|t| (t - now_unix()).clamp(0, u32::MAX as i64) as u32)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use std::collections::VecDeque;

    use super::*;

    fn handle() -> Handle {
        Handle::new(
            1,
            Arc::from("c1"),
            "u".into(),
            Arc::new(Outbox::new(1 << 20)),
        )
    }

    fn publication(channel: &str, offset: u64) -> Arc<Publication> {
        let data = Bytes::from(format!("{{\"n\":{offset}}}"));
        Arc::new(Publication::new(Arc::from(channel), data, None).with_offset(offset))
    }

    /// Delivers as the hub does, with the publication's push as the frame.
    fn deliver(h: &Handle, p: &Arc<Publication>) {
        h.deliver(p, &hub::frame(p.json_push().clone()).unwrap());
    }

    /// The offsets queued so far, in order.
    fn queued(h: &Handle) -> Vec<u64> {
        let mut items = VecDeque::new();
        h.outbox.drain(&mut items);
        items
            .iter()
            .map(|item| match item {
                Item::Frame(f) => {
                    let v: serde_json::Value = serde_json::from_str(f).unwrap();
                    v["push"]["pub"]["data"]["n"].as_u64().unwrap()
                }
                Item::Control(_) => panic!("no control expected"),
            })
            .collect()
    }

    fn in_use(h: &Handle) -> bool {
        let used = h.guards.lock().is_some();
        assert_eq!(
            used,
            h.guarded.load(Ordering::Acquire),
            "flag and guards agree"
        );
        used
    }

    #[test]
    fn held_publications_newer_than_the_reply_go_out_in_order_then_guards_go() {
        let h = handle();
        h.start_buffering("a");
        for n in [4, 5, 6] {
            deliver(&h, &publication("a", n));
        }
        deliver(&h, &publication("b", 9));
        assert_eq!(queued(&h), [9], "another channel is not held");
        h.finish_buffering("a", 4);
        assert_eq!(queued(&h), [5, 6]);
        assert!(!in_use(&h), "something newer passed: no floor kept");
        deliver(&h, &publication("a", 7));
        assert_eq!(queued(&h), [7]);
    }

    #[test]
    fn a_floor_drops_what_the_reply_covered_until_something_newer_passes() {
        let h = handle();
        h.start_buffering("a");
        deliver(&h, &publication("a", 3));
        h.finish_buffering("a", 3);
        assert!(queued(&h).is_empty());
        assert!(in_use(&h), "the floor stays");
        deliver(&h, &publication("a", 3));
        assert!(queued(&h).is_empty(), "at the floor: already known");
        deliver(&h, &publication("a", 4));
        deliver(&h, &publication("a", 2));
        assert_eq!(
            queued(&h),
            [4, 2],
            "the floor is lifted by the first newer one"
        );
        assert!(!in_use(&h));
    }

    #[test]
    fn forgetting_drops_what_was_held() {
        let h = handle();
        h.start_buffering("a");
        deliver(&h, &publication("a", 1));
        h.forget("a");
        assert!(!in_use(&h));
        h.finish_buffering("a", 0);
        assert!(
            queued(&h).is_empty(),
            "nothing held survives an unsubscribe"
        );
    }
}
