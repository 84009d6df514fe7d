//! Subscriptions: subscribe (by permission, user-limited name or token),
//! unsubscribe, subscription token refresh, and server-side subscriptions.

use bytes::Bytes;
use herald_protocol::command::SubscribeRequest;
use herald_protocol::reply::{Push, ReplyBody, SubRefreshResult, SubscribeResult};
use herald_protocol::{Disconnect, ProtocolError};

use super::{ttl_from, Session, SubState};
use crate::auth::{now_unix, TokenError};
use crate::channel::Asker;

type Outcome = Result<ReplyBody, ProtocolError>;

impl Session {
    /// Subscribes and writes the reply itself (it must precede publications).
    pub(super) async fn subscribe(
        &mut self,
        id: u32,
        req: SubscribeRequest,
    ) -> Result<(), Disconnect> {
        let channel = req.channel;
        let state = match self.check_subscribe(&channel, &req.token)? {
            Ok(state) => state,
            Err(e) => {
                self.reply(id, Err(e));
                return Ok(());
            }
        };
        let result = SubscribeResult {
            expires: state.expires_at.is_some(),
            ttl: ttl_from(state.expires_at),
            ..Default::default()
        };
        // Reply first, then join the hub, so that no publication overtakes
        // the subscribe reply.
        self.reply(id, Ok(ReplyBody::Subscribe(result)));
        self.subs.insert(channel.clone(), state);
        self.hub_subscribe(&channel).await;
        Ok(())
    }

    /// Permission and limit checks for a client subscribe.
    fn check_subscribe(
        &self,
        channel: &str,
        token: &str,
    ) -> Result<Result<SubState, ProtocolError>, Disconnect> {
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
                .subscription_tokens
                .verify_subscription(token, now_unix())
            {
                Ok(c) => c,
                Err(TokenError::Expired) => return Ok(Err(ProtocolError::TOKEN_EXPIRED)),
                Err(TokenError::Invalid(why)) => {
                    tracing::info!(client = %self.client_id, channel, reason = %why, "invalid subscription token");
                    return Err(Disconnect::invalid_token());
                }
            };
            if claims.channel != channel || claims.user != user {
                return Ok(Err(ProtocolError::PERMISSION_DENIED));
            }
            return Ok(Ok(SubState {
                expires_at: claims.expires_at,
                chan_info: claims.info,
            }));
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
        Ok(Ok(SubState::default()))
    }

    /// Joins the hub's channel; tells the broker when this is the node's
    /// first subscriber there.
    pub(super) async fn hub_subscribe(&self, channel: &str) {
        let Some(conn) = &self.conn else { return };
        if self.node.hub.subscribe(channel, conn.handle.clone()) {
            self.node.broker_subscribe(channel).await;
        }
    }

    pub(super) async fn unsubscribe(&mut self, channel: &str) -> Result<(), ProtocolError> {
        if self.subs.remove(channel).is_none() {
            return Ok(());
        }
        if let Some(conn) = &self.conn {
            if self.node.hub.unsubscribe(channel, conn.handle.key) {
                self.node.broker_unsubscribe(channel).await;
            }
        }
        Ok(())
    }

    pub(super) fn sub_refresh(
        &mut self,
        channel: &str,
        token: &str,
    ) -> Result<Outcome, Disconnect> {
        let user = self.user().unwrap_or_default().to_string();
        if !self.subs.contains_key(channel) {
            return Ok(Err(ProtocolError::PERMISSION_DENIED));
        }
        let claims = match self
            .node
            .subscription_tokens
            .verify_subscription(token, now_unix())
        {
            Ok(c) => c,
            Err(TokenError::Expired) => return Ok(Err(ProtocolError::TOKEN_EXPIRED)),
            Err(TokenError::Invalid(_)) => return Err(Disconnect::invalid_token()),
        };
        if claims.channel != channel || claims.user != user {
            return Ok(Err(ProtocolError::PERMISSION_DENIED));
        }
        if let Some(s) = self.subs.get_mut(channel) {
            s.expires_at = claims.expires_at;
            if claims.info.is_some() {
                s.chan_info = claims.info;
            }
        }
        Ok(Ok(ReplyBody::SubRefresh(SubRefreshResult {
            expires: claims.expires_at.is_some(),
            ttl: ttl_from(claims.expires_at),
        })))
    }

    /// A subscription the server API asked for: announced with a subscribe push.
    pub(super) async fn server_subscribe_push(
        &mut self,
        channel: String,
        info: Option<Bytes>,
        data: Option<Bytes>,
        expire_at: Option<i64>,
    ) {
        if self.conn.is_none()
            || self.subs.contains_key(&channel)
            || self.node.rules.resolve(&channel).is_err()
        {
            return;
        }
        let result = SubscribeResult {
            data,
            ..Default::default()
        };
        self.push(&Push::Subscribe {
            channel: channel.clone(),
            result,
        });
        self.subs.insert(
            channel.clone(),
            SubState {
                expires_at: expire_at,
                chan_info: info,
            },
        );
        self.hub_subscribe(&channel).await;
    }
}
