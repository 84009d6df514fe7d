//! The session's calls to the application's backend: who a connection
//! without a token is (connect proxy), whether an expiring connection or
//! subscription goes on (refresh and sub_refresh proxies, asked by the
//! server), channel access (subscribe proxy), what a client publishes
//! (publish proxy) and client RPC. Each answer's `error` reaches the client
//! as an error reply, its `disconnect` closes the connection, as in
//! Centrifugo; a backend that cannot be asked gives error 100 (or what
//! `status_to_code_transforms` says).

use std::sync::Arc;

use bytes::Bytes;
use herald_protocol::command::ConnectRequest;
use herald_protocol::reply::ReplyBody;
use herald_protocol::{Disconnect, ProtocolError};

use super::Session;
use crate::auth::{now_unix, ConnectionClaims, Overrides, SubOptions};
use crate::metrics::Counters;
use crate::proxy::{
    json_payload, pb, Base, Call, Endpoint, Origin, ProxyError, Refusal, Reply, Request,
};

/// How long a connection or subscription goes on when its refresh proxy
/// cannot be asked: it is asked again then.
const RETRY_REFRESH_IN: i64 = 60;

/// The longest expiry a refresh may set (Centrifugo's cap).
const MAX_TTL: i64 = 365 * 24 * 3600;

/// A refusal as the session's commands return it: `Ok` an error reply,
/// `Err` a disconnect.
pub(super) fn split(r: Refusal) -> Result<ProtocolError, Disconnect> {
    match r {
        Refusal::Error(e) => Ok(e),
        Refusal::Disconnect(d) => Err(d),
    }
}

/// What a subscribe proxy allowed.
pub(super) struct Allowed {
    pub expires_at: Option<i64>,
    pub options: SubOptions,
}

/// What a publish proxy decided.
pub(super) struct Publishing {
    pub data: Bytes,
    pub result: pb::PublishResult,
}

/// What a refresh or sub_refresh proxy decided.
pub(super) enum Renewal {
    /// It ends: expired (or as a status transform says).
    Ended(Option<Disconnect>),
    /// The backend could not be asked: ask again in a while.
    Retry,
    Renewed {
        expire_at: i64,
        info: Option<Bytes>,
        meta: Option<Bytes>,
    },
}

impl Session {
    fn base(&self) -> Base<'_> {
        Base {
            client: &self.client_id,
            transport: self.peer.transport,
            protocol: self.encoding.protocol_name(),
        }
    }

    fn meta_for(&self, endpoint: &Endpoint) -> Vec<u8> {
        match (&self.conn, endpoint.include_meta()) {
            (Some(conn), true) => conn.meta.as_deref().unwrap_or_default().to_vec(),
            _ => Vec::new(),
        }
    }

    fn user_name(&self) -> String {
        self.user().unwrap_or_default().to_string()
    }

    /// Keeps the SDK's emulated headers for the connection's calls, when
    /// some proxy passes them on.
    pub(super) fn keep_emulated(&mut self, req: &ConnectRequest) {
        if self.node.proxies.keeps_emulated() {
            let mut headers: Vec<(String, String)> = req
                .headers
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect();
            headers.sort();
            self.peer.emulated = headers;
        }
    }

    /// Calls the backend; a failure is logged and counted.
    async fn call<Req: Request, Resp: Reply>(
        &self,
        endpoint: &Endpoint,
        call: Call,
        request: Req,
    ) -> Result<Resp, ProxyError> {
        Counters::incr(&self.node.counters.proxy_calls);
        let origin = Origin {
            headers: &self.peer.headers,
            emulated: &self.peer.emulated,
        };
        let answer = endpoint.call(call, self.base(), request, origin).await;
        if let Err(e) = &answer {
            Counters::incr(&self.node.counters.proxy_errors);
            tracing::warn!(
                client = %self.client_id,
                proxy = %endpoint.name,
                call = call.name(),
                error = %e,
                "proxy call failed"
            );
        }
        answer
    }

    /// Calls the backend for a client's command: its result, or what the
    /// client is told (error 100 when the backend could not be asked).
    async fn ask<Req: Request, Resp: Reply>(
        &self,
        endpoint: &Endpoint,
        call: Call,
        request: Req,
    ) -> Result<Option<Resp::Result>, Refusal> {
        match self.call::<Req, Resp>(endpoint, call, request).await {
            Ok(answer) => answer.decide(),
            Err(e) => Err(endpoint
                .transform(&e)
                .unwrap_or(Refusal::Error(ProtocolError::INTERNAL))),
        }
    }

    fn garbage(&self, endpoint: &Endpoint, call: Call, why: &str) -> Refusal {
        Counters::incr(&self.node.counters.proxy_errors);
        tracing::warn!(client = %self.client_id, proxy = %endpoint.name, call = call.name(), why, "proxy answer refused");
        Refusal::Error(ProtocolError::INTERNAL)
    }

    /// Who a client that connects without a token is. `Ok(None)`: the
    /// backend gave no result (anonymous where that is allowed).
    pub(super) async fn connect_by_proxy(
        &mut self,
        endpoint: Arc<Endpoint>,
        req: &ConnectRequest,
    ) -> Result<Option<(ConnectionClaims, Option<Bytes>)>, Refusal> {
        let data = req
            .data
            .as_deref()
            .map(|d| d.get().as_bytes())
            .unwrap_or_default();
        let (data, b64data) = endpoint.payload(data);
        let mut channels: Vec<String> = req.subs.keys().cloned().collect();
        channels.sort();
        let request = pb::ConnectRequest {
            data,
            b64data,
            name: req.name.clone(),
            version: req.version.clone(),
            channels,
            ..Default::default()
        };
        let call = Call::Connect;
        let Some(result) = self
            .ask::<_, pb::ConnectResponse>(&endpoint, call, request)
            .await?
        else {
            return Ok(None);
        };
        let bad = |why| self.garbage(&endpoint, call, why);
        let info = json_payload(result.info, &result.b64info).map_err(bad)?;
        let data = json_payload(result.data, &result.b64data).map_err(bad)?;
        let meta = json_payload(result.meta, "").map_err(bad)?;
        let mut subs: Vec<(String, SubOptions)> = result
            .channels
            .into_iter()
            .map(|c| (c, SubOptions::default()))
            .collect();
        let mut named: Vec<(String, pb::SubscribeOptions)> = result.subs.into_iter().collect();
        named.sort_by(|a, b| a.0.cmp(&b.0));
        for (channel, o) in named {
            let options =
                sub_options(o.info, &o.b64info, o.data, &o.b64data, o.r#override).map_err(bad)?;
            subs.retain(|(c, _)| *c != channel);
            subs.push((channel, options));
        }
        for (channel, _) in &subs {
            // As Centrifugo: a channel of no namespace is refused.
            if let Err(e) = self.node.rules.resolve(channel) {
                tracing::info!(client = %self.client_id, channel, "connect proxy subscribes to an unknown channel");
                return Err(Refusal::Error(e));
            }
        }
        let claims = ConnectionClaims {
            user: result.user,
            expires_at: (result.expire_at > 0).then_some(result.expire_at),
            info,
            subs,
            meta,
            id: Default::default(),
        };
        Ok(Some((claims, data)))
    }

    /// Asks a refresh or sub_refresh proxy whether what expires goes on.
    async fn renew<Req: Request, Resp: Reply>(
        &self,
        endpoint: &Endpoint,
        call: Call,
        request: Req,
        answer: impl FnOnce(Resp::Result) -> (bool, i64, Vec<u8>, String, Vec<u8>),
    ) -> Renewal {
        let result = match self.call::<Req, Resp>(endpoint, call, request).await {
            Ok(reply) => match reply.decide() {
                Ok(Some(result)) => result,
                // No result is expired, as in Centrifugo.
                Ok(None) => return Renewal::Ended(None),
                Err(Refusal::Disconnect(d)) => return Renewal::Ended(Some(d)),
                Err(Refusal::Error(_)) => return Renewal::Ended(None),
            },
            // A listed status decides; any other failure is asked again.
            Err(e) => {
                return match endpoint.transform(&e) {
                    Some(Refusal::Disconnect(d)) => Renewal::Ended(Some(d)),
                    Some(Refusal::Error(_)) => Renewal::Ended(None),
                    None => Renewal::Retry,
                }
            }
        };
        let (expired, expire_at, info, b64info, meta) = answer(result);
        let now = now_unix();
        if expired || expire_at <= now {
            return Renewal::Ended(None);
        }
        let info = json_payload(info, &b64info).unwrap_or_else(|why| {
            tracing::warn!(client = %self.client_id, why, "refresh info ignored");
            None
        });
        Renewal::Renewed {
            expire_at: expire_at.min(now + MAX_TTL),
            info,
            meta: json_payload(meta, "").ok().flatten(),
        }
    }

    /// At a connection's expiry, with a refresh proxy: asks whether it goes
    /// on. `Err` closes the connection (3005 when the backend says it
    /// expired).
    pub(super) async fn refresh_by_proxy(
        &mut self,
        endpoint: Arc<Endpoint>,
    ) -> Result<(), Disconnect> {
        let request = pb::RefreshRequest {
            user: self.user_name(),
            meta: self.meta_for(&endpoint),
            ..Default::default()
        };
        let renewal = self
            .renew::<_, pb::RefreshResponse>(&endpoint, Call::Refresh, request, |r| {
                (r.expired, r.expire_at, r.info, r.b64info, r.meta)
            })
            .await;
        let Some(conn) = self.conn.as_mut() else {
            return Ok(());
        };
        match renewal {
            Renewal::Ended(d) => return Err(d.unwrap_or_else(Disconnect::expired)),
            Renewal::Retry => conn.expires_at = Some(now_unix() + RETRY_REFRESH_IN),
            Renewal::Renewed {
                expire_at,
                info,
                meta,
            } => {
                conn.expires_at = Some(expire_at);
                if info.is_some() {
                    conn.conn_info = info;
                }
                if meta.is_some() {
                    conn.meta = meta;
                }
            }
        }
        Ok(())
    }

    /// At a subscription's expiry, with a sub_refresh proxy: asks whether
    /// it goes on. `Ok(false)`: it ends (the caller unsubscribes it);
    /// `Err`: the backend closes the connection.
    pub(super) async fn sub_refresh_by_proxy(
        &mut self,
        endpoint: Arc<Endpoint>,
        channel: &str,
    ) -> Result<bool, Disconnect> {
        let request = pb::SubRefreshRequest {
            user: self.user_name(),
            channel: channel.to_string(),
            meta: self.meta_for(&endpoint),
            ..Default::default()
        };
        let renewal = self
            .renew::<_, pb::SubRefreshResponse>(&endpoint, Call::SubRefresh, request, |r| {
                (r.expired, r.expire_at, r.info, r.b64info, Vec::new())
            })
            .await;
        let Some(state) = self.subs.get_mut(channel) else {
            return Ok(true);
        };
        match renewal {
            Renewal::Ended(Some(d)) => return Err(d),
            Renewal::Ended(None) => return Ok(false),
            Renewal::Retry => state.expires_at = Some(now_unix() + RETRY_REFRESH_IN),
            Renewal::Renewed {
                expire_at, info, ..
            } => {
                state.expires_at = Some(expire_at);
                if info.is_some() {
                    state.chan_info = info;
                }
            }
        }
        Ok(true)
    }

    /// Asks the subscribe proxy whether the client may subscribe.
    pub(super) async fn subscribe_by_proxy(
        &self,
        endpoint: Arc<Endpoint>,
        channel: &str,
        token: &str,
        data: Option<&[u8]>,
    ) -> Result<Allowed, Refusal> {
        let (data, b64data) = endpoint.payload(data.unwrap_or_default());
        let request = pb::SubscribeRequest {
            user: self.user_name(),
            channel: channel.to_string(),
            token: token.to_string(),
            meta: self.meta_for(&endpoint),
            data,
            b64data,
            ..Default::default()
        };
        let call = Call::Subscribe;
        let result = self
            .ask::<_, pb::SubscribeResponse>(&endpoint, call, request)
            .await?
            .unwrap_or_default();
        if result.expire_at > 0 && result.expire_at < now_unix() {
            return Err(Refusal::Error(ProtocolError::EXPIRED));
        }
        let options = sub_options(
            result.info,
            &result.b64info,
            result.data,
            &result.b64data,
            result.r#override,
        )
        .map_err(|why| self.garbage(&endpoint, call, why))?;
        Ok(Allowed {
            expires_at: (result.expire_at > 0).then_some(result.expire_at),
            options,
        })
    }

    /// Asks the publish proxy about a client's publication: what to
    /// publish (the data, perhaps replaced) and how.
    pub(super) async fn publish_by_proxy(
        &self,
        endpoint: Arc<Endpoint>,
        channel: &str,
        data: Bytes,
    ) -> Result<Publishing, Refusal> {
        let (raw, b64data) = endpoint.payload(&data);
        let request = pb::PublishRequest {
            user: self.user_name(),
            channel: channel.to_string(),
            data: raw,
            b64data,
            meta: self.meta_for(&endpoint),
            ..Default::default()
        };
        let call = Call::Publish;
        let mut result = self
            .ask::<_, pb::PublishResponse>(&endpoint, call, request)
            .await?
            .unwrap_or_default();
        // Replaced data: `data` first, then `b64data` (as Centrifugo).
        let raw = std::mem::take(&mut result.data);
        let replaced = if raw.is_empty() {
            json_payload(Vec::new(), &result.b64data)
        } else {
            json_payload(raw, "")
        }
        .map_err(|why| self.garbage(&endpoint, call, why))?;
        Ok(Publishing {
            data: replaced.unwrap_or(data),
            result,
        })
    }

    /// A client RPC, answered by the proxy its method's namespace names.
    pub(super) async fn rpc_by_proxy(
        &self,
        endpoint: Arc<Endpoint>,
        method: &str,
        data: &[u8],
    ) -> Result<ReplyBody, Refusal> {
        let (data, b64data) = endpoint.payload(data);
        let request = pb::RpcRequest {
            user: self.user_name(),
            method: method.to_string(),
            data,
            b64data,
            meta: self.meta_for(&endpoint),
            ..Default::default()
        };
        let call = Call::Rpc;
        let result = self
            .ask::<_, pb::RpcResponse>(&endpoint, call, request)
            .await?
            .unwrap_or_default();
        let data = json_payload(result.data, &result.b64data)
            .map_err(|why| self.garbage(&endpoint, call, why))?;
        Ok(ReplyBody::Rpc(data))
    }
}

/// A subscription's options from a connect result's `subs` entry or a
/// subscribe result.
fn sub_options(
    info: Vec<u8>,
    b64info: &str,
    data: Vec<u8>,
    b64data: &str,
    o: Option<pb::SubscribeOptionOverride>,
) -> Result<SubOptions, &'static str> {
    let value = |v: Option<pb::BoolValue>| v.map(|b| b.value);
    let overrides = o.map_or_else(Overrides::default, |o| Overrides {
        presence: value(o.presence),
        join_leave: value(o.join_leave),
        force_push_join_leave: value(o.force_push_join_leave),
        force_recovery: value(o.force_recovery),
        force_positioning: value(o.force_positioning),
    });
    Ok(SubOptions {
        info: json_payload(info, b64info)?,
        data: json_payload(data, b64data)?,
        overrides,
    })
}
