//! A Pusher socket's channels: subscribing with signatures and presence,
//! leaving, staying subscribed when live delivery starts over, signing in,
//! and client events.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use tokio::time::Instant;

use bytes::Bytes;
use herald_protocol::{ClientInfo, ProtocolError};
use serde_json::{json, Value};

use super::super::{is_cache, sign, valid_channel, Kind, Pusher, EXCLUDED_SOCKET};
use super::{code, Close, Link, Sub, MAX_USER_ID};
use crate::hub::Client;
use crate::node::PublishOptions;
use crate::store::HistoryQuery;

/// How many of a cache channel's newest publications are looked through
/// for its last event.
const CACHE_LOOKBACK: usize = 5;

impl Link {
    /// Subscribes again in the hub (a stale subscription gets nothing
    /// more), keeping presence and the socket's own state.
    pub(super) fn rejoin(&mut self, name: &str) {
        let Some(sub) = self.subs.get(name) else {
            return;
        };
        self.node.hub.unsubscribe(&sub.channel, self.conn.key);
        let client: Arc<dyn Client> = self.conn.clone();
        self.node
            .hub
            .subscribe(&sub.channel, client, sub.member.is_some());
    }

    pub(super) fn refuse_subscription(&self, channel: &str, status: u16, why: &str) {
        let data = json!({"type": "AuthError", "error": why, "status": status}).to_string();
        self.push("pusher:subscription_error", Some(channel), &data);
    }

    pub(super) async fn subscribe(&mut self, data: &Value) {
        let Some(name) = data.get("channel").and_then(Value::as_str) else {
            return self.error(None, "pusher:subscribe needs a channel");
        };
        match name.strip_prefix(super::super::USER_CHANNEL) {
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
        if is_cache(name) {
            // Before the hub: live events from now on are noted.
            self.conn.cache.start(&channel);
        }
        let client: Arc<dyn Client> = self.conn.clone();
        if self.node.hub.subscribe(&channel, client, member.is_some()) {
            self.node.broker_sync(&channel).await;
        }
        self.subs.insert(
            name,
            Sub {
                channel: channel.clone(),
                kind,
                member: member.clone(),
                counted_at: 0,
            },
        );
        self.tell_webhooks(&channel, member.as_deref(), true).await;
        let Some(info) = member else {
            self.push("pusher_internal:subscription_succeeded", Some(name), "{}");
            self.app.subscriptions_changed(&self.node, name, &channel);
            return self.send_cached(name, &channel).await;
        };
        self.node.presence().add(&channel, info.clone()).await;
        self.node.presence_event(&channel, info.clone(), true).await;
        let mut snapshot = self.node.presence_get(&channel).await.unwrap_or_default();
        snapshot.insert(info.client.clone(), info);
        {
            let mut members = self.conn.members.lock();
            let (data, tell) = members.loaded(&channel, &snapshot, &self.conn.id);
            self.push("pusher_internal:subscription_succeeded", Some(name), &data);
            for event in tell {
                if let Some(frame) = event.frame::<Pusher>() {
                    self.conn.outbox.push_frame(frame);
                }
            }
        }
        self.send_cached(name, &channel).await;
    }

    /// On a cache channel (`cache-`, `private-cache-`,
    /// `private-encrypted-cache-`, `presence-cache-`), what a new
    /// subscriber gets first: the channel's last event, kept by its
    /// namespace's history, or `pusher:cache_miss` (and the `cache_miss`
    /// webhook) when there is none — unless a live event reached it in
    /// the meantime, which is newer ([`super::cache`]).
    async fn send_cached(&self, name: &str, channel: &str) {
        if !is_cache(name) {
            return;
        }
        // The newest event Pusher clients can take (a publication of the
        // namespace that is not an event is passed over).
        let last = HistoryQuery {
            since: None,
            limit: Some(CACHE_LOOKBACK),
            reverse: true,
        };
        let (cached, known) = match self.node.history(channel, last).await {
            Ok(page) => {
                let found = page
                    .publications
                    .iter()
                    .find_map(|p| Some((p.offset, p.frame::<Pusher>()?)));
                (found, true)
            }
            Err(e) if e.code == ProtocolError::NOT_AVAILABLE.code => {
                if !self.app.warned_no_history.swap(true, Ordering::Relaxed) {
                    tracing::warn!(
                        app = %self.app.cfg.id,
                        channel,
                        "cache channels answer pusher:cache_miss: the app's namespace keeps no history (set history_size and history_ttl)"
                    );
                }
                (None, true)
            }
            Err(e) => {
                tracing::warn!(channel, error = %e.message, "cache channel: history unreadable");
                (None, false)
            }
        };
        let mut missed = false;
        self.conn.cache.finish(channel, |seen| match cached {
            Some((offset, frame)) if offset > seen => {
                self.conn.outbox.push_frame(frame);
            }
            // The client already has it, or something newer.
            Some(_) => {}
            None if seen == 0 => {
                self.push("pusher:cache_miss", Some(name), "{}");
                missed = true;
            }
            None => {}
        });
        // The backend hears of a miss it can fill (not of a store outage).
        if let (true, true, Some(hooks)) = (missed, known, &self.node.webhooks) {
            hooks.cache_miss(channel).await;
        }
    }

    pub(super) async fn leave(&mut self, name: &str) {
        let Some(sub) = self.subs.remove(name) else {
            return;
        };
        if self.node.hub.unsubscribe(&sub.channel, self.conn.key) {
            self.node.broker_sync(&sub.channel).await;
        }
        self.app
            .subscriptions_changed(&self.node, name, &sub.channel);
        self.tell_webhooks(&sub.channel, sub.member.as_deref(), false)
            .await;
        if let Some(info) = sub.member {
            self.conn.members.lock().leave(&sub.channel);
            self.node
                .presence()
                .remove(&sub.channel, &self.conn.id)
                .await;
            self.node.presence_event(&sub.channel, info, false).await;
        }
    }

    /// Tells the webhooks (when configured) of a subscription made (`up`)
    /// or ended, and of its presence member.
    async fn tell_webhooks(&self, channel: &str, member: Option<&ClientInfo>, up: bool) {
        let Some(hooks) = &self.node.webhooks else {
            return;
        };
        let (id, user) = (&*self.conn.id, member.map_or(self.signed_in(), |m| &m.user));
        if up {
            hooks.subscribed(id, user, channel).await;
        }
        if let Some(m) = member {
            hooks.member(channel, &m.user, up, id).await;
        }
        if !up {
            hooks.unsubscribed(id, user, channel).await;
        }
    }

    /// The id the socket signed in with (none: empty).
    pub(super) fn signed_in(&self) -> &str {
        let user = self.conn.user();
        let prefix = super::super::hub_user(&self.app.cfg.id, "");
        user.strip_prefix(&prefix).unwrap_or(user)
    }

    pub(super) async fn sign_in(&mut self, data: &Value) -> Result<(), Close> {
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
        let parsed = serde_json::from_str::<Value>(user_data).unwrap_or_default();
        let Some(id) = parsed.get("id").and_then(user_id) else {
            return Err(Close::new(code::UNAUTHORIZED, "user_data needs an id"));
        };
        if self.conn.user.get().is_some() {
            self.error(None, "Already signed in");
            return Ok(());
        }
        let user = super::super::hub_user(&self.app.cfg.id, &id);
        if self.node.access.check_connection(&user, None).is_err() {
            return Err(Close::new(code::UNAUTHORIZED, "The user is blocked"));
        }
        // Registered again under the user, so that the user's connections
        // can be found (terminate_connections) on any node.
        self.node.hub.remove_client(&*self.conn);
        let _ = self.conn.user.set(user);
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
        if self.app.cfg.enable_watchlist_events {
            Box::pin(self.go_online(&id, &parsed)).await;
        }
        Ok(())
    }

    pub(super) async fn client_event(&mut self, event: &str, name: Option<&str>, data: &Value) {
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
        let presence_user = sub.member.as_ref().map(|m| m.user.clone());
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
            return self.error(None, &format!("Client event not published: {}", e.message));
        }
        if let Some(hooks) = &self.node.webhooks {
            // Pusher's webhooks carry the data as the text the socket sent.
            let data = match data {
                Value::String(s) => s.clone(),
                other => other.to_string(),
            };
            let user = presence_user.as_deref();
            hooks
                .client_event(&channel, event, &data, &self.conn.id, user)
                .await;
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
