//! One client connection's protocol state: commands in, replies and pushes
//! out through the connection's [`Outbox`], timers for pings, pongs, token
//! expiry and the connect deadline. Transports feed it frames and run its
//! timers; it never touches a socket itself.

mod commands;
mod connect;
mod handle;
mod outbox;
mod plan;
mod proxied;
mod server_side;
mod subscribe;

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use herald_protocol::codes::unsubscribe;
use herald_protocol::filter::FilterNode;
use herald_protocol::reply::{Push, ReplyBody};
use herald_protocol::{Disconnect, Method, ProtocolError};
use tokio::time::Instant;

pub use handle::Handle;
pub use outbox::{Item, Outbox};

use crate::access::Denied;
use crate::auth::{now_unix, TokenId};
use crate::channel::map::ChannelMap;
use crate::frame::{Encoding, Frame};
use crate::hub::Control;
use crate::metrics::Counters;
use crate::node::Node;
use crate::ratelimit::{CommandLimits, Kind};

/// How an error closes a unidirectional connection, which cannot be sent
/// error replies: an expired token (109) as 3005 (reconnect with a fresh
/// one), an unauthorized or refused connect as 3500, anything else as
/// 3501.
fn uni_disconnect(e: &ProtocolError) -> Disconnect {
    match e.code {
        109 => Disconnect::expired(),
        101 | 103 => Disconnect::invalid_token(),
        _ => Disconnect::new(3501, e.message.clone()),
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
    /// Made by the server (token or server API): the client cannot
    /// subscribe to it again by itself.
    server_side: bool,
    /// The subscription token's identity, when it was made with one.
    token: Option<TokenId>,
    /// At expiry the server asks the namespace's sub_refresh proxy whether
    /// the subscription goes on (the client is never asked).
    server_refresh: bool,
    /// Only publications whose tags pass it reach the client (`tf`).
    filter: Option<Arc<FilterNode>>,
    /// Publications come as Fossil deltas where they can (`delta`).
    delta: bool,
}

/// Where a connection comes from, for the application backend's proxies.
#[derive(Debug, Default)]
pub struct Peer {
    /// The transport's name: `websocket`, `uni_websocket`,
    /// `uni_http_stream`, `uni_sse`, `http_stream`, `sse`.
    pub transport: &'static str,
    /// An emulated connection's session (`http_stream`, `sse`): told to the
    /// client in the connect reply, it finds the connection when the client
    /// posts commands to the emulation endpoint.
    pub session: Option<Box<str>>,
    /// The headers of the client's HTTP request that some proxy passes on.
    pub headers: Vec<(String, String)>,
    /// The SDK's emulated headers (sent with connect), kept when some
    /// proxy passes them on.
    emulated: Vec<(String, String)>,
}

impl Peer {
    pub fn new(node: &Node, transport: &'static str, headers: &axum::http::HeaderMap) -> Self {
        let headers = node
            .proxies
            .header_names()
            .iter()
            .filter_map(|name| {
                let value = headers.get(name.as_str())?.to_str().ok()?;
                Some((name.clone(), value.to_string()))
            })
            .collect();
        Self {
            transport,
            headers,
            session: None,
            emulated: Vec::new(),
        }
    }
}

/// Identity after a successful connect.
struct Connected {
    handle: Arc<Handle>,
    /// `info` from the connection token (or the last refresh); a publication's
    /// or presence entry's `ClientInfo` is built from it when needed.
    conn_info: Option<Bytes>,
    expires_at: Option<i64>,
    /// The connection token's identity (the last refresh's).
    token: TokenId,
    /// `meta` from the token or the connect proxy (the last refresh's),
    /// which proxies may pass on to the backend.
    meta: Option<Bytes>,
}

pub struct Session {
    node: Arc<Node>,
    /// The format the client speaks.
    encoding: Encoding,
    outbox: Arc<Outbox>,
    client_id: Arc<str>,
    conn: Option<Connected>,
    subs: ChannelMap<SubState>,
    connect_deadline: Option<Instant>,
    next_ping: Option<Instant>,
    pong_deadline: Option<Instant>,
    /// Command buckets, when `client.command_rate_limit` sets any.
    limits: Option<Box<CommandLimits>>,
    peer: Peer,
    /// The command being handled, for metrics.
    method: &'static str,
    /// When the ping now awaiting its pong went out.
    ping_sent: Option<Instant>,
}

impl Session {
    pub fn new(node: Arc<Node>, encoding: Encoding, peer: Peer) -> Self {
        let outbox = Arc::new(Outbox::new(node.config.client.queue_max_size));
        let stale = node.config.client.stale_close_delay.0;
        Self {
            encoding,
            outbox,
            client_id: Arc::from(uuid::Uuid::new_v4().to_string()),
            conn: None,
            subs: ChannelMap::default(),
            connect_deadline: (!stale.is_zero()).then(|| Instant::now() + stale),
            next_ping: None,
            pong_deadline: None,
            limits: CommandLimits::new(&node.config.client.command_rate_limit),
            peer,
            method: "",
            ping_sent: None,
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

    /// Handles one transport frame of commands (newline-separated JSON, or
    /// length-prefixed Protobuf).
    pub async fn handle_frame(&mut self, frame: &[u8]) -> Result<(), Disconnect> {
        let encoding = self.encoding;
        for command in encoding.commands(frame) {
            let command = command.map_err(|e| {
                tracing::info!(client = %self.client_id, error = %e, "undecodable command");
                Disconnect::bad_request()
            })?;
            let not_json = command.payload_not_json;
            let (id, method) = command.into_method();
            let started = std::time::Instant::now();
            self.method = method.name();
            let done = self.dispatch(id, method, not_json).await;
            // Counted whatever the outcome (the histogram's count is the
            // number of commands).
            self.node.metrics.command(self.method, started.elapsed());
            done?;
        }
        Ok(())
    }

    /// Runs one command; `not_json`: a payload of it was not JSON.
    async fn dispatch(
        &mut self,
        id: u32,
        method: Method,
        not_json: bool,
    ) -> Result<(), Disconnect> {
        if id == 0 {
            return match method {
                // The client's pong.
                Method::Empty => {
                    self.pong_deadline = None;
                    if let Some(sent) = self.ping_sent.take() {
                        self.node.metrics.ping_pong(sent.elapsed());
                    }
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
        if !self.within_rate(&method) {
            Counters::incr(&self.node.counters.commands_refused_by_rate);
            self.reply(id, Err(ProtocolError::TOO_MANY_REQUESTS));
            return Ok(());
        }
        if not_json {
            // Channels carry JSON, whatever format delivers it.
            // Per command, the connection stays: debug, so that one client
            // cannot flood the log.
            tracing::debug!(client = %self.client_id, "payload is not JSON");
            self.reply(id, Err(ProtocolError::BAD_REQUEST));
            return Ok(());
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
            Method::Publish(req) => self.publish(req).await?,
            Method::Presence(req) => self.presence(&req.channel, false).await,
            Method::PresenceStats(req) => self.presence(&req.channel, true).await,
            Method::History(req) => self.history(req).await,
            Method::Ping => Ok(ReplyBody::Ping),
            Method::Rpc(req) => self.rpc(req).await?,
            Method::Refresh(req) => {
                self.node.tokens.connection.prepare(&req.token).await;
                self.refresh(&req.token)?
            }
            Method::SubRefresh(req) => self.sub_refresh(&req.channel, &req.token).await?,
            Method::Send(_) | Method::Empty => Err(ProtocolError::BAD_REQUEST),
        };
        self.reply(id, result);
        Ok(())
    }

    /// Takes a token for the command's kind when its rate is limited.
    fn within_rate(&mut self, method: &Method) -> bool {
        let Some(limits) = self.limits.as_mut() else {
            return true;
        };
        let kind = match method {
            Method::Publish(_) => Kind::Publish,
            Method::Subscribe(_) | Method::SubRefresh(_) => Kind::Subscribe,
            Method::History(_) => Kind::History,
            Method::Presence(_) | Method::PresenceStats(_) => Kind::Presence,
            Method::Rpc(_) => Kind::Rpc,
            _ => return true,
        };
        limits.allow(kind)
    }

    fn reply(&self, id: u32, result: Result<ReplyBody, ProtocolError>) {
        if let Err(e) = &result {
            self.node.metrics.reply_error(self.method, e.code);
        }
        if let (Err(e), false) = (&result, self.encoding.replies_errors()) {
            tracing::debug!(client = %self.client_id, code = e.code, "command error: closing");
            let d = uni_disconnect(e);
            self.outbox.push_control(Control::Disconnect(d));
            return;
        }
        let frame = match &result {
            Ok(body) => self.encoding.reply(id, body),
            Err(e) => {
                tracing::debug!(client = %self.client_id, code = e.code, "command error");
                self.encoding.error(id, e)
            }
        };
        self.queue(frame);
    }

    fn push(&self, push: &Push) {
        self.queue(self.encoding.push(push));
    }

    /// Queues an encoded reply or push. One that could not be encoded (a
    /// JSON frame that is not UTF-8 — a bug, logged by `frame::checked`)
    /// closes the connection with an internal error rather than leave the
    /// client waiting for it.
    fn queue(&self, frame: Option<Frame>) {
        match frame {
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
                let server_side = self.subs.get(&channel).is_some_and(|s| s.server_side);
                if server_side && code == unsubscribe::INSUFFICIENT.0 {
                    // Only a reconnect, naming it in `subs`, recovers it.
                    return Err(Disconnect::insufficient_state());
                }
                self.end_subscription(&channel, (code, &reason)).await;
            }
            Control::Subscribe(sub) => self.server_subscribe_push(*sub).await,
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
            Control::CheckAccess => self.check_access().await?,
            // Pusher's subscription counting has no Centrifugo form.
            Control::Count { .. } => {}
            Control::Emulate(data) if !data.is_empty() => {
                return Box::pin(self.handle_frame(&data)).await;
            }
            Control::Emulate(_) => {}
        }
        Ok(())
    }

    /// After access rules changed: a blocked user's connection, or one with
    /// a revoked token, closes; subscriptions made with a revoked token end.
    async fn check_access(&mut self) -> Result<(), Disconnect> {
        let Some(conn) = &self.conn else {
            return Ok(());
        };
        let access = &self.node.access;
        let user = conn.handle.user.as_str();
        access
            .check_connection(user, Some(&conn.token))
            .map_err(Denied::disconnect)?;
        let revoked: Vec<String> = self
            .subs
            .iter()
            .filter(|(channel, s)| {
                s.token
                    .as_ref()
                    .is_some_and(|id| access.subscription_revoked(user, channel, id))
            })
            .map(|(channel, _)| channel.to_string())
            .collect();
        for channel in revoked {
            tracing::info!(client = %self.client_id, channel, "subscription token revoked");
            self.end_subscription(&channel, unsubscribe::TOKEN_REVOKED)
                .await;
        }
        Ok(())
    }

    /// The earliest moment a timer needs attention.
    pub fn next_deadline(&self) -> Option<Instant> {
        let expiry = self
            .conn
            .as_ref()
            .and_then(|c| c.expires_at)
            .map(|t| deadline_at(t, self.expiry_delay()));
        let sub_expiry = self
            .subs
            .values()
            .filter_map(|s| {
                s.expires_at
                    .map(|t| deadline_at(t, self.sub_expiry_delay(s)))
            })
            .min();
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
            self.outbox.push_frame(self.encoding.ping());
            let c = &self.node.config.client;
            if !c.pong_timeout.is_zero() && self.pong_deadline.is_none() && self.encoding.pongs() {
                self.pong_deadline = Some(now + c.pong_timeout.0);
                self.ping_sent = Some(now);
            }
            self.next_ping = Some(at + c.ping_interval.0);
        }
        if self
            .conn
            .as_ref()
            .and_then(|c| c.expires_at)
            .is_some_and(|t| is_due(t, self.expiry_delay()))
        {
            match self.node.proxies.refresh().cloned() {
                Some(proxy) => self.refresh_by_proxy(proxy).await?,
                None => return Err(Disconnect::expired()),
            }
        }
        let expired: Vec<(String, bool)> = self
            .subs
            .iter()
            .filter(|(_, s)| {
                s.expires_at
                    .is_some_and(|t| is_due(t, self.sub_expiry_delay(s)))
            })
            .map(|(ch, s)| (ch.to_string(), s.server_refresh))
            .collect();
        for (channel, server_refresh) in expired {
            if server_refresh {
                if let Some(proxy) = self.sub_refresh_proxy(&channel) {
                    if self.sub_refresh_by_proxy(proxy, &channel).await? {
                        continue;
                    }
                }
            }
            self.end_subscription(&channel, unsubscribe::EXPIRED).await;
        }
        Ok(())
    }

    /// Time past a connection's expiry before it closes: none when the
    /// server refreshes it, else the client's grace to refresh.
    fn expiry_delay(&self) -> Duration {
        if self.node.proxies.refresh().is_some() {
            Duration::ZERO
        } else {
            self.node.config.client.expired_close_delay.0
        }
    }

    fn sub_expiry_delay(&self, s: &SubState) -> Duration {
        if s.server_refresh {
            Duration::ZERO
        } else {
            self.node.config.client.expired_sub_close_delay.0
        }
    }

    /// Leaves the hub and every channel. Call once when the transport ends,
    /// with the disconnect the server sent (`None`: the client went away).
    pub async fn close(mut self, why: Option<&Disconnect>) {
        let channels: Vec<String> = self.subs.channels().map(str::to_string).collect();
        for channel in channels {
            self.unsubscribe(&channel).await;
        }
        if let Some(conn) = self.conn.take() {
            if let Some(session) = &self.peer.session {
                self.node.hub.remove_session(session);
            }
            self.node.hub.remove_client(&*conn.handle);
            tracing::debug!(client = %self.client_id, user = %conn.handle.user, "disconnected");
            let shutdown = Disconnect::shutdown().code;
            if why.is_some_and(|d| d.code == shutdown) && self.node.shutdown().is_cancelled() {
                Counters::incr(&self.node.counters.shutdown_closes);
            }
            if let Some(w) = &self.node.webhooks {
                let closed = Disconnect::connection_closed();
                let d = why.unwrap_or(&closed);
                w.disconnected(&self.client_id, &conn.handle.user, d.code, &d.reason)
                    .await;
            }
        }
    }
}

/// Time left until Unix second `unix` plus `delay` (zero when past).
fn due_in(unix: i64, delay: Duration) -> Duration {
    let target = unix
        .saturating_mul(1000)
        .saturating_add(delay.as_millis() as i64);
    Duration::from_millis((target - crate::clock::now_ms()).max(0) as u64)
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

/// The `expires` and `ttl` fields of a reply: none when the server
/// refreshes (the client is never asked to).
fn expiry(expires_at: Option<i64>, client_refresh: bool) -> (bool, u32) {
    if client_refresh {
        (expires_at.is_some(), ttl_from(expires_at))
    } else {
        (false, 0)
    }
}

/// Seconds left until `expires_at`, for `ttl` fields.
fn ttl_from(expires_at: Option<i64>) -> u32 {
    expires_at
        .map(|t| (t - now_unix()).clamp(0, u32::MAX as i64) as u32)
        .unwrap_or(0)
}
