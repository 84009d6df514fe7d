//! The connect and refresh commands: who the client is, for how long, and
//! which channels the server subscribes it to.

use std::sync::Arc;

use bytes::Bytes;

use herald_protocol::command::ConnectRequest;
use herald_protocol::reply::{ConnectResult, RefreshResult, ReplyBody};
use herald_protocol::{Disconnect, ProtocolError};
use tokio::time::Instant;

use super::{expiry, ttl_from, Connected, Handle, Session};
use crate::auth::{now_unix, ConnectionClaims, TokenError};
use crate::hub::Refused;
use crate::node::Node;
use crate::wire::control::{Action, Target};

impl Session {
    pub(super) async fn connect(&mut self, id: u32, req: ConnectRequest) -> Result<(), Disconnect> {
        let (mut claims, data) = match self.identify(&req).await {
            Ok(identified) => identified,
            Err(Ok(err)) => {
                self.reply(id, Err(err));
                return Ok(());
            }
            Err(Err(d)) => return Err(d),
        };
        if claims.expires_at.is_some_and(|t| t < now_unix()) {
            tracing::info!(client = %self.client_id, "connection already expired");
            self.reply(id, Err(ProtocolError::EXPIRED));
            return Ok(());
        }
        let personal = &self.node.config.client.subscribe_to_user_personal_channel;
        if personal.enabled && !claims.user.is_empty() {
            let channel = self.node.config.personal_channel(&claims.user);
            if !claims.subs.iter().any(|(c, _)| *c == channel) {
                claims.subs.push((channel, Default::default()));
            }
        }
        let cfg = &self.node.config.client;
        let handle = Arc::new(Handle::new(
            self.node.next_key(),
            self.client_id.clone(),
            claims.user.clone(),
            self.outbox.clone(),
            self.encoding,
            self.peer.transport,
        ));
        match self.node.hub.add_client(
            handle.clone(),
            cfg.connection_limit,
            cfg.user_connection_limit,
        ) {
            Ok(()) => {}
            Err(Refused::NodeLimit | Refused::UserLimit) => {
                tracing::info!(user = %claims.user, "connection limit reached");
                return Err(Disconnect::connection_limit());
            }
        }
        // Blocks and revocations are checked once the connection is in the
        // hub: one made meanwhile either finds it there or is seen here
        // (rules are applied before connections are looked for).
        if let Err(denied) = self
            .node
            .access
            .check_connection(&claims.user, Some(&claims.id))
        {
            tracing::info!(client = %self.client_id, user = %claims.user, ?denied, "connection refused");
            self.node.hub.remove_client(&*handle);
            return Err(denied.disconnect());
        }
        self.conn = Some(Connected {
            handle: handle.clone(),
            conn_info: claims.info.clone(),
            expires_at: claims.expires_at,
            token: claims.id.clone(),
            meta: claims.meta.clone(),
        });
        // Told before its server-side subscriptions.
        if let Some(w) = &self.node.webhooks {
            w.connected(&self.client_id, &claims.user).await;
        }
        // Positioned server-side subscriptions are entered now, their
        // publications held until the reply is queued.
        let (subs, after) = match self.enter_server_side(claims.subs, req.subs).await {
            Ok(entered) => entered,
            Err(e) => {
                // Nothing of the connection stays; the client may try again.
                self.conn = None;
                self.node.hub.remove_client(&*handle);
                if let Some(w) = &self.node.webhooks {
                    let d = Disconnect::internal();
                    w.disconnected(&self.client_id, &claims.user, d.code, &e.message)
                        .await;
                }
                self.reply(id, Err(e));
                return Ok(());
            }
        };
        let cfg = &self.node.config.client;
        self.connect_deadline = None;
        // With a refresh proxy the server refreshes; the client never does.
        let (expires, ttl) = expiry(claims.expires_at, self.node.proxies.refresh().is_none());
        if !cfg.ping_interval.is_zero() {
            let delay = first_ping_delay(cfg.ping_interval.0, self.node.next_key());
            self.next_ping = Some(Instant::now() + delay);
        }
        let result = ConnectResult {
            client: self.client_id.to_string(),
            version: Node::version().to_string(),
            expires,
            ttl,
            data,
            subs,
            ping: cfg.ping_interval.0.as_secs() as u32,
            pong: !cfg.ping_interval.is_zero()
                && !cfg.pong_timeout.is_zero()
                && self.encoding.pongs(),
            session: self.peer.session.as_deref().unwrap_or_default().into(),
            node: match &self.peer.session {
                Some(_) => self.node.cluster().uid().to_string(),
                None => String::new(),
            },
            time: if cfg.connect_include_server_time {
                crate::clock::now_ms()
            } else {
                0
            },
        };
        tracing::debug!(client = %self.client_id, user = %claims.user, "connected");
        // The reply goes out before the hub can route publications here.
        self.reply(id, Ok(ReplyBody::Connect(result)));
        if let Some(session) = &self.peer.session {
            self.node.hub.add_session(session, handle.clone());
        }
        self.finish_server_side(after).await;
        let personal = &self.node.config.client.subscribe_to_user_personal_channel;
        if personal.enabled && personal.single_connection && !claims.user.is_empty() {
            // The user's other connections, on every node, close (3504).
            let d = Disconnect::connection_limit();
            let target = Target {
                user: claims.user.clone(),
                whitelist: vec![self.client_id.to_string()],
                ..Default::default()
            };
            let action = Action::Disconnect {
                code: d.code,
                reason: d.reason.to_string(),
            };
            if self.node.user_command(target, action).await.is_err() {
                tracing::warn!(client = %self.client_id, "other connections of a single-connection user not closed");
            }
        }
        Ok(())
    }

    /// Who the client is: from its token, or, without one, from the
    /// connect proxy when there is one (with the data the backend has for
    /// the connect reply). `Err(Ok(e))` is an error reply (the client may
    /// retry), `Err(Err(d))` closes the connection.
    async fn identify(
        &mut self,
        req: &ConnectRequest,
    ) -> Result<(ConnectionClaims, Option<Bytes>), Result<ProtocolError, Disconnect>> {
        self.keep_emulated(req);
        let proxy = self.node.proxies.connect().filter(|_| req.token.is_empty());
        let Some(proxy) = proxy.cloned() else {
            self.node.tokens.connection.prepare(&req.token).await;
            return self.authenticate(&req.token).map(|c| (c, None));
        };
        match self.connect_by_proxy(proxy, req).await {
            Ok(Some(identified)) => Ok(identified),
            Ok(None) => {
                let cfg = &self.node.config.client;
                if cfg.insecure || cfg.allow_anonymous_connect_without_token {
                    return Ok((ConnectionClaims::default(), None));
                }
                tracing::info!(client = %self.client_id, "connect proxy gave no credentials");
                Err(Err(Disconnect::bad_request()))
            }
            Err(refusal) => Err(super::proxied::split(refusal)),
        }
    }

    /// Checks the connection token. `Err(Ok(e))` is an error reply (the
    /// client may retry), `Err(Err(d))` closes the connection.
    fn authenticate(
        &self,
        token: &str,
    ) -> Result<ConnectionClaims, Result<ProtocolError, Disconnect>> {
        let cfg = &self.node.config.client;
        if token.is_empty() {
            if cfg.insecure || cfg.allow_anonymous_connect_without_token {
                return Ok(ConnectionClaims::default());
            }
            tracing::info!(client = %self.client_id, "connect without token refused");
            return Err(Ok(ProtocolError::UNAUTHORIZED));
        }
        match self
            .node
            .tokens
            .connection
            .verify_connection(token, now_unix())
        {
            Ok(claims) if claims.user.is_empty() && cfg.disallow_anonymous_connection_tokens => {
                Err(Err(Disconnect::invalid_token()))
            }
            Ok(claims) => Ok(claims),
            Err(TokenError::Expired) => Err(Ok(ProtocolError::TOKEN_EXPIRED)),
            Err(TokenError::Invalid(why)) => {
                tracing::info!(client = %self.client_id, reason = %why, "invalid connection token");
                Err(Err(Disconnect::invalid_token()))
            }
        }
    }

    pub(super) fn refresh(
        &mut self,
        token: &str,
    ) -> Result<Result<ReplyBody, ProtocolError>, Disconnect> {
        if self.node.proxies.refresh().is_some() {
            // The server refreshes connections itself; the client may not.
            return Err(Disconnect::bad_request());
        }
        let claims = match self
            .node
            .tokens
            .connection
            .verify_connection(token, now_unix())
        {
            Ok(c) => c,
            // Too late to refresh: reconnecting fetches a fresh token.
            Err(TokenError::Expired) => return Err(Disconnect::expired()),
            Err(TokenError::Invalid(why)) => {
                tracing::info!(client = %self.client_id, reason = %why, "invalid refresh token");
                return Err(Disconnect::invalid_token());
            }
        };
        let conn = self.conn.as_mut().ok_or_else(Disconnect::bad_request)?;
        if claims.user != conn.handle.user {
            tracing::info!(client = %self.client_id, "refresh token for another user");
            return Err(Disconnect::invalid_token());
        }
        if let Err(denied) = self
            .node
            .access
            .check_connection(&claims.user, Some(&claims.id))
        {
            tracing::info!(client = %self.client_id, ?denied, "refresh refused");
            return Err(denied.disconnect());
        }
        conn.expires_at = claims.expires_at;
        conn.token = claims.id;
        if claims.meta.is_some() {
            conn.meta = claims.meta;
        }
        if claims.info.is_some() {
            conn.conn_info = claims.info;
        }
        Ok(Ok(ReplyBody::Refresh(RefreshResult {
            client: self.client_id.to_string(),
            version: Node::version().to_string(),
            expires: claims.expires_at.is_some(),
            ttl: ttl_from(claims.expires_at),
        })))
    }
}

/// A client's raw JSON payload (already parsed as JSON by the decoder);
/// a missing or null payload is a bad request.
pub(super) fn payload(
    data: Option<&serde_json::value::RawValue>,
) -> Result<bytes::Bytes, ProtocolError> {
    data.map(|raw| bytes::Bytes::copy_from_slice(raw.get().as_bytes()))
        .ok_or(ProtocolError::BAD_REQUEST)
}

/// The first ping comes after a delay between half the interval and the full
/// interval, spread by `seed`, so that clients that connected together (after
/// a restart) do not all ping at once.
fn first_ping_delay(interval: std::time::Duration, seed: u64) -> std::time::Duration {
    let half = interval / 2;
    let spread = half.as_millis().max(1) as u64;
    half + std::time::Duration::from_millis(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) % spread)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    #[test]
    fn first_pings_are_spread_over_the_second_half_of_the_interval() {
        let delays: Vec<Duration> = (0..100)
            .map(|seed| super::first_ping_delay(Duration::from_secs(20), seed))
            .collect();
        assert!(delays
            .iter()
            .all(|d| *d >= Duration::from_secs(10) && *d < Duration::from_secs(20)));
        let distinct: std::collections::HashSet<_> = delays.iter().collect();
        assert!(distinct.len() > 50, "spread, not bunched");
    }
}
