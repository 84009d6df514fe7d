//! Subscriptions: subscribe (by permission, user-limited name or token, with
//! stream position and recovery where the namespace keeps history),
//! unsubscribe, subscription token refresh, and server-side subscriptions.

use std::sync::Arc;

use bytes::Bytes;
use herald_protocol::codes::unsubscribe;
use herald_protocol::command::SubscribeRequest;
use herald_protocol::reply::{Push, ReplyBody, SubRefreshResult, SubscribeResult};
use herald_protocol::{ClientInfo, Disconnect, ProtocolError, Publication};

use super::plan::Plan;
use super::{expiry, ttl_from, Session, SubState};
use crate::auth::{now_unix, SubOptions, SubscriptionClaims, TokenError};
use crate::channel::Asker;
use crate::config::ChannelOptions;
use crate::hub::{as_text, Delivery};
use crate::proxy::{ChannelEvent, Endpoint};
use crate::store::{HistoryQuery, StreamPosition};

type Outcome = Result<ReplyBody, ProtocolError>;

impl Session {
    /// Subscribes and writes the reply itself: it must precede every
    /// publication of the channel this client receives.
    pub(super) async fn subscribe(
        &mut self,
        id: u32,
        req: SubscribeRequest,
    ) -> Result<(), Disconnect> {
        let channel = req.channel.clone();
        self.node.tokens.subscription.prepare(&req.token).await;
        let (mut state, token) = match self.check_subscribe(&channel, &req.token)? {
            Ok(Verdict::Granted(state, token)) => (state, token),
            Ok(Verdict::AskBackend(proxy)) => {
                let data = req.data.as_deref().map(|d| d.get().as_bytes());
                match self
                    .subscribe_by_proxy(proxy, &channel, &req.token, data)
                    .await
                {
                    Ok(allowed) => {
                        let state = SubState {
                            expires_at: allowed.expires_at,
                            chan_info: allowed.options.info.clone(),
                            ..Default::default()
                        };
                        (state, allowed.options)
                    }
                    Err(refusal) => {
                        self.reply(id, Err(super::proxied::split(refusal)?));
                        return Ok(());
                    }
                }
            }
            Err(e) => {
                self.reply(id, Err(e));
                return Ok(());
            }
        };
        state.server_refresh = self.sub_refresh_proxy(&channel).is_some();
        if self.conn.is_none() {
            return Err(Disconnect::bad_request());
        }
        let options = self
            .node
            .rules
            .resolve(&channel)
            .map(|r| r.options.clone())
            .unwrap_or_default();
        if let Some(filter) = &req.tf {
            // As Centrifugo: a filter where none is allowed, or a malformed
            // one, is the client's mistake.
            let refused = match options.allow_tags_filter {
                false => Some("tags filter not allowed in this channel".to_string()),
                true => filter.validate().err(),
            };
            if let Some(why) = refused {
                tracing::info!(client = %self.client_id, channel, why, "tags filter refused");
                return Err(Disconnect::bad_request());
            }
            state.filter = Some(Arc::new(filter.clone()));
        }
        let has_stream = self.node.stream_options(&options).is_some();
        let plan = Plan::new(&options, has_stream, &token.overrides, Some(&req));
        plan.apply(&mut state);
        state.delta = plan.delta(&req.delta, &options).map_err(|()| {
            tracing::info!(client = %self.client_id, channel, delta = req.delta, "unknown delta type");
            Disconnect::bad_request()
        })?;
        let (expires, ttl) = expiry(state.expires_at, !state.server_refresh);
        let mut result = SubscribeResult {
            expires,
            ttl,
            recoverable: plan.recoverable,
            positioned: plan.positioned,
            data: token.data,
            delta: state.delta,
            ..Default::default()
        };
        if !plan.positioned {
            // Reply first, then join the hub, so no publication overtakes it.
            self.reply(id, Ok(ReplyBody::Subscribe(result)));
            self.join_channel(&channel, state, plan.push_join_leave)
                .await;
            return Ok(());
        }
        let entered = self
            .enter_positioned(&channel, state, &plan, &req, &options, &mut result)
            .await;
        match entered {
            Ok(top) => {
                if result.delta && self.encoding.is_text() {
                    // Delta subscribers' data are JSON strings, from the first.
                    let whole = result.publications.iter().filter_map(|p| as_text(p));
                    result.publications = whole.collect();
                }
                if let (true, Some(last), Some(conn)) =
                    (result.delta, result.publications.last(), &self.conn)
                {
                    // The client has the last recovered publication: the
                    // next may be a delta against it.
                    conn.handle.delta_base(&channel, last.offset);
                }
                self.reply(id, Ok(ReplyBody::Subscribe(result)));
                self.release(&channel, top).await;
            }
            Err(e) => self.reply(id, Err(e)),
        }
        Ok(())
    }

    /// Joins the hub with the channel's publications held back, then reads
    /// where its stream stands, recovering what `req` asks for, into
    /// `result`; returns the offset the client is then at. The caller
    /// replies, then calls [`Session::release`], so that nothing is lost or
    /// repeated between the read and live delivery. On an error the client
    /// has left the channel again (and nothing of it reached the client).
    pub(super) async fn enter_positioned(
        &mut self,
        channel: &str,
        state: SubState,
        plan: &Plan,
        req: &SubscribeRequest,
        options: &ChannelOptions,
        result: &mut SubscribeResult,
    ) -> Result<u64, ProtocolError> {
        let Some(conn) = &self.conn else {
            return Err(ProtocolError::BAD_REQUEST);
        };
        conn.handle.start_buffering(channel);
        self.enter_channel(channel, state, plan.push_join_leave)
            .await;
        match self.position(channel, req, options, result).await {
            Ok(top) => {
                if !result.epoch.is_empty() {
                    self.node.hub.observe_position(channel, top, &result.epoch);
                }
                Ok(top)
            }
            Err(e) => {
                // Leaves the hub, then drops what was held.
                self.unsubscribe(channel).await;
                Err(e)
            }
        }
    }

    /// After the reply to [`Session::enter_positioned`]: releases the held
    /// publications newer than `top`, then announces the client to others.
    pub(super) async fn release(&mut self, channel: &str, top: u64) {
        if let Some(conn) = &self.conn {
            conn.handle.finish_buffering(channel, top);
        }
        self.announce(channel).await;
    }

    /// Fills the stream position and, when recovering, the missed
    /// publications; returns the offset the client is then at.
    async fn position(
        &self,
        channel: &str,
        req: &SubscribeRequest,
        options: &ChannelOptions,
        result: &mut SubscribeResult,
    ) -> Result<u64, ProtocolError> {
        let limit = self.node.config.client.recovery_limit();
        let position_only = HistoryQuery {
            since: None,
            limit: None,
            reverse: false,
        };
        if !(req.recover && result.recoverable) {
            let page = self.node.history(channel, position_only).await?;
            result.epoch = page.position.epoch;
            result.offset = page.position.offset;
            return Ok(result.offset);
        }
        result.was_recovering = true;
        let cache_mode = options.force_recovery_mode == "cache";
        let query = if cache_mode {
            HistoryQuery {
                since: None,
                limit: Some(1),
                reverse: true,
            }
        } else {
            let since = StreamPosition {
                offset: req.offset,
                epoch: req.epoch.clone(),
            };
            // One more than the cap tells "too many" from "exactly the cap".
            HistoryQuery {
                since: Some(since),
                limit: limit.map(|n| n + 1).or(Some(usize::MAX)),
                reverse: false,
            }
        };
        let (page, recovered) = match self.node.history(channel, query).await {
            Ok(page) if cache_mode => {
                let recovered = page.position.epoch == req.epoch;
                (page, recovered)
            }
            Ok(page) => {
                // Never partial: every publication after the client's offset
                // must still be in the stream, and not too many of them.
                let complete = match page.publications.first() {
                    Some(first) => {
                        first.offset == req.offset + 1
                            && limit.is_none_or(|n| page.publications.len() <= n)
                    }
                    None => page.position.offset == req.offset,
                };
                (page, complete)
            }
            Err(e) if e == ProtocolError::UNRECOVERABLE_POSITION => {
                (self.node.history(channel, position_only).await?, false)
            }
            Err(e) => return Err(e),
        };
        result.epoch = page.position.epoch;
        result.offset = page.position.offset;
        if recovered {
            let passes = |p: &Arc<Publication>| req.tf.as_ref().is_none_or(|f| f.matches(&p.tags));
            result.publications = page
                .publications
                .into_iter()
                .filter(|p| p.offset > req.offset && passes(p))
                .collect();
        }
        // A recovery the client's queue could not take (a publication
        // stored before the size limit, say) would close it as too slow on
        // every attempt: it is refused as impossible instead.
        let size: usize = result
            .publications
            .iter()
            .map(|p| self.encoding.publication(p).map_or(0, |f| f.len()))
            .sum();
        result.recovered = recovered && size < self.node.config.client.queue_max_size;
        self.node.metrics.recovery(result.recovered);
        if !result.recovered {
            result.publications.clear();
            if req.flag & SubscribeRequest::FLAG_REJECT_UNRECOVERED != 0 {
                return Err(ProtocolError::UNRECOVERABLE_POSITION);
            }
        }
        Ok(result.offset)
    }

    /// Permission and limit checks for a client subscribe; with a
    /// subscription token, also what the token sets. A token that is not
    /// valid is refused with 103; one for another channel, user or client
    /// is a misuse that closes the connection (3500), as in Centrifugo.
    fn check_subscribe(
        &self,
        channel: &str,
        token: &str,
    ) -> Result<Result<Verdict, ProtocolError>, Disconnect> {
        let resolved = match self.node.rules.resolve(channel) {
            Ok(r) => r,
            Err(e) => return Ok(Err(e)),
        };
        if self.subs.contains_key(channel) {
            return Ok(Err(ProtocolError::ALREADY_SUBSCRIBED));
        }
        if self.subs.len() >= self.node.config.client.channel_limit {
            return Ok(Err(ProtocolError::LIMIT_EXCEEDED));
        }
        let user = self.user().unwrap_or_default();
        if !token.is_empty() {
            let claims = match self
                .node
                .tokens
                .subscription
                .verify_subscription(token, now_unix())
            {
                Ok(c) => c,
                Err(TokenError::Expired) => return Ok(Err(ProtocolError::TOKEN_EXPIRED)),
                Err(TokenError::Invalid(why)) => {
                    // Per command, the connection stays (103): debug.
                    tracing::debug!(client = %self.client_id, channel, reason = %why, "invalid subscription token");
                    return Ok(Err(ProtocolError::PERMISSION_DENIED));
                }
            };
            self.check_token_target(channel, &claims)?;
            if self
                .node
                .access
                .subscription_revoked(&claims.user, channel, &claims.id)
            {
                tracing::debug!(client = %self.client_id, channel, "revoked subscription token");
                return Ok(Err(ProtocolError::PERMISSION_DENIED));
            }
            let state = SubState {
                expires_at: claims.expires_at,
                chan_info: claims.options.info.clone(),
                token: Some(claims.id),
                ..Default::default()
            };
            return Ok(Ok(Verdict::Granted(state, claims.options)));
        }
        if self.node.rules.subscribe_proxied(&resolved) {
            let options = resolved.options;
            return Ok(
                match self
                    .node
                    .proxies
                    .channel(ChannelEvent::Subscribe, &options.subscribe_proxy_name)
                {
                    Some(proxy) => Ok(Verdict::AskBackend(proxy.clone())),
                    None => Err(ProtocolError::NOT_AVAILABLE),
                },
            );
        }
        if !self.node.rules.can_subscribe(
            &resolved,
            &Asker {
                user,
                subscribed: false,
            },
        ) {
            return Ok(Err(ProtocolError::PERMISSION_DENIED));
        }
        Ok(Ok(Verdict::Granted(
            SubState::default(),
            SubOptions::default(),
        )))
    }

    /// The sub_refresh proxy of the channel's namespace, when it has one.
    pub(super) fn sub_refresh_proxy(&self, channel: &str) -> Option<Arc<Endpoint>> {
        let options = self.node.rules.resolve(channel).ok()?.options;
        if !options.sub_refresh_proxy_enabled {
            return None;
        }
        self.node
            .proxies
            .channel(ChannelEvent::SubRefresh, &options.sub_refresh_proxy_name)
            .cloned()
    }

    /// A subscription token made for another channel, user or client closes
    /// the connection (3500).
    fn check_token_target(
        &self,
        channel: &str,
        claims: &SubscriptionClaims,
    ) -> Result<(), Disconnect> {
        let user = self.user().unwrap_or_default();
        let misuse = if claims.channel != channel {
            "channel"
        } else if claims.user != user {
            "user"
        } else if !claims.client.is_empty() && claims.client != *self.client_id {
            "client"
        } else {
            return Ok(());
        };
        tracing::info!(client = %self.client_id, channel, misuse, "subscription token for another {misuse}");
        Err(Disconnect::invalid_token())
    }

    /// The client's info as shown in this channel (with the subscription's
    /// `chan_info`).
    pub(super) fn member_info(&self, chan_info: Option<Bytes>) -> Option<Arc<ClientInfo>> {
        let conn = self.conn.as_ref()?;
        Some(Arc::new(ClientInfo {
            user: conn.handle.user.clone(),
            client: self.client_id.to_string(),
            conn_info: conn.conn_info.clone(),
            chan_info,
        }))
    }

    /// Records the subscription and joins the hub, telling the broker when
    /// this is the node's first subscriber. Presence and the join event come
    /// with [`Session::announce`], once the client has its reply.
    async fn enter_channel(&mut self, channel: &str, state: SubState, join_leave_push: bool) {
        let Some(conn) = &self.conn else { return };
        let handle = conn.handle.clone();
        let delivery = Delivery {
            join_leave: join_leave_push,
            filter: state.filter.clone(),
            delta: state.delta,
        };
        if state.delta {
            handle.start_deltas(channel);
        }
        self.subs.insert(channel, state);
        let first = self
            .node
            .hub
            .subscribe_with(channel, handle.clone(), delivery);
        if first {
            self.node.broker_sync(channel).await;
        }
        if let Some(w) = &self.node.webhooks {
            w.subscribed(&self.client_id, &handle.user, channel).await;
        }
    }

    /// Adds the client to the channel's presence and announces its join,
    /// as the namespace says.
    async fn announce(&mut self, channel: &str) {
        let Some(state) = self.subs.get_mut(channel) else {
            return;
        };
        if !(state.presence || state.join_leave) {
            return;
        }
        state.announced = true;
        let (presence, join_leave) = (state.presence, state.join_leave);
        let chan_info = state.chan_info.clone();
        let Some(info) = self.member_info(chan_info) else {
            return;
        };
        if presence {
            self.node.presence().add(channel, info.clone()).await;
        }
        if join_leave {
            self.node.presence_event(channel, info, true).await;
        }
    }

    /// Subscribes a client whose reply (or push) is already queued.
    pub(super) async fn join_channel(
        &mut self,
        channel: &str,
        state: SubState,
        join_leave_push: bool,
    ) {
        self.enter_channel(channel, state, join_leave_push).await;
        self.announce(channel).await;
    }

    /// Leaves a channel; false when the client was not subscribed.
    pub(super) async fn unsubscribe(&mut self, channel: &str) -> bool {
        let Some(state) = self.subs.remove(channel) else {
            return false;
        };
        let Some(conn) = &self.conn else { return true };
        // Out of the hub first, so no delivery slips in after the guards go.
        let last = self.node.hub.unsubscribe(channel, conn.handle.key);
        conn.handle.forget(channel);
        if last {
            self.node.broker_sync(channel).await;
        }
        if let Some(w) = &self.node.webhooks {
            w.unsubscribed(&self.client_id, &conn.handle.user, channel)
                .await;
        }
        if state.announced && state.presence {
            self.node.presence().remove(channel, &self.client_id).await;
        }
        if state.announced && state.join_leave {
            if let Some(info) = self.member_info(state.chan_info) {
                self.node.presence_event(channel, info, false).await;
            }
        }
        true
    }

    /// Ends a subscription from the server side with an unsubscribe push
    /// (codes from 2500 make the SDK subscribe again).
    pub(super) async fn end_subscription(&mut self, channel: &str, (code, reason): (u32, &str)) {
        if self.unsubscribe(channel).await {
            self.push(&Push::Unsubscribe {
                channel: channel.to_string(),
                code,
                reason: reason.to_string(),
            });
        }
    }

    pub(super) async fn sub_refresh(
        &mut self,
        channel: &str,
        token: &str,
    ) -> Result<Outcome, Disconnect> {
        match self.subs.get(channel) {
            None => return Ok(Err(ProtocolError::PERMISSION_DENIED)),
            // The server refreshes this subscription itself; the client may not.
            Some(s) if s.server_refresh => return Err(Disconnect::bad_request()),
            Some(_) => {}
        }
        self.node.tokens.subscription.prepare(token).await;
        let claims = match self
            .node
            .tokens
            .subscription
            .verify_subscription(token, now_unix())
        {
            Ok(c) => c,
            Err(TokenError::Expired) => {
                // Too late to refresh: end the subscription with a code that
                // makes the SDK subscribe again with a fresh token.
                self.end_subscription(channel, unsubscribe::EXPIRED).await;
                return Ok(Ok(ReplyBody::SubRefresh(SubRefreshResult::default())));
            }
            Err(TokenError::Invalid(_)) => return Err(Disconnect::invalid_token()),
        };
        self.check_token_target(channel, &claims)?;
        if self
            .node
            .access
            .subscription_revoked(&claims.user, channel, &claims.id)
        {
            self.end_subscription(channel, unsubscribe::TOKEN_REVOKED)
                .await;
            return Ok(Ok(ReplyBody::SubRefresh(SubRefreshResult::default())));
        }
        if let Some(s) = self.subs.get_mut(channel) {
            s.token = Some(claims.id);
            s.expires_at = claims.expires_at;
            if claims.options.info.is_some() {
                s.chan_info = claims.options.info;
            }
        }
        Ok(Ok(ReplyBody::SubRefresh(SubRefreshResult {
            expires: claims.expires_at.is_some(),
            ttl: ttl_from(claims.expires_at),
        })))
    }
}

/// What the subscribe checks decided.
enum Verdict {
    /// Subscribe, with what a token set.
    Granted(SubState, SubOptions),
    /// The namespace's subscribe proxy decides.
    AskBackend(Arc<Endpoint>),
}
