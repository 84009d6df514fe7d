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
use crate::proxy::{json_payload, pb, Answer, Base, Call, Endpoint, Origin, Refusal, Request};

/// How long a connection or subscription goes on when its refresh proxy
/// cannot be asked: it is asked again then.
const RETRY_REFRESH_IN: i64 = 60;

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

    /// Calls the backend; a failure is logged, counted and turned into what
    /// the client is told.
    async fn ask<Req: Request, Resp: Answer>(
        &self,
        endpoint: &Endpoint,
        call: Call,
        request: Req,
    ) -> Result<Resp, (Refusal, crate::proxy::ProxyError)> {
        Counters::incr(&self.node.counters.proxy_calls);
        let origin = Origin {
            headers: &self.peer.headers,
            emulated: &self.peer.emulated,
        };
        match endpoint.call(call, self.base(), request, origin).await {
            Ok(answer) => Ok(answer),
            Err(e) => {
                Counters::incr(&self.node.counters.proxy_errors);
                tracing::warn!(
                    client = %self.client_id,
                    proxy = %endpoint.name,
                    call = call.name(),
                    error = %e,
                    "proxy call failed"
                );
                let told = endpoint
                    .transform(&e)
                    .unwrap_or(Refusal::Error(ProtocolError::INTERNAL));
                Err((told, e))
            }
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
        if self.node.proxies.keeps_emulated() {
            let mut headers: Vec<(String, String)> = req
                .headers
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect();
            headers.sort();
            self.peer.emulated = headers;
        }
        let data = req
            .data
            .as_deref()
            .map(|d| d.get().as_bytes())
            .unwrap_or_default();
        let (data, b64data) = endpoint.payload(data);
        let request = pb::ConnectRequest {
            data,
            b64data,
            name: req.name.clone(),
            version: req.version.clone(),
            ..Default::default()
        };
        let answer: pb::ConnectResponse = self
            .ask(&endpoint, Call::Connect, request)
            .await
            .map_err(|(told, _)| told)?;
        if let Some(r) = Refusal::from_answer(answer.error.as_ref(), answer.disconnect.as_ref()) {
            return Err(r);
        }
        let Some(result) = answer.result else {
            return Ok(None);
        };
        let bad = |why| self.garbage(&endpoint, Call::Connect, why);
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
            let options = SubOptions {
                info: json_payload(o.info, &o.b64info).map_err(bad)?,
                data: json_payload(o.data, &o.b64data).map_err(bad)?,
                overrides: overrides(o.r#override),
            };
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
        let answer: Result<pb::RefreshResponse, _> =
            self.ask(&endpoint, Call::Refresh, request).await;
        let Some(conn) = self.conn.as_mut() else {
            return Ok(());
        };
        let result = match answer {
            Ok(answer) => match answer.result {
                Some(result) if !result.expired => result,
                _ => return Err(Disconnect::expired()),
            },
            Err(_) => {
                // Asked again in a while.
                conn.expires_at = Some(now_unix() + RETRY_REFRESH_IN);
                return Ok(());
            }
        };
        if result.expire_at <= now_unix() {
            return Err(Disconnect::expired());
        }
        conn.expires_at = Some(result.expire_at);
        match json_payload(result.info, &result.b64info) {
            Ok(Some(info)) => conn.conn_info = Some(info),
            Ok(None) => {}
            Err(why) => {
                tracing::warn!(client = %self.client_id, why, "refresh proxy's info ignored")
            }
        }
        if let Ok(Some(meta)) = json_payload(result.meta, "") {
            conn.meta = Some(meta);
        }
        Ok(())
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
        let answer: pb::SubscribeResponse = self
            .ask(&endpoint, Call::Subscribe, request)
            .await
            .map_err(|(told, _)| told)?;
        if let Some(r) = Refusal::from_answer(answer.error.as_ref(), answer.disconnect.as_ref()) {
            return Err(r);
        }
        let Some(result) = answer.result else {
            return Ok(Allowed {
                expires_at: None,
                options: SubOptions::default(),
            });
        };
        let bad = |why| self.garbage(&endpoint, Call::Subscribe, why);
        Ok(Allowed {
            expires_at: (result.expire_at > 0).then_some(result.expire_at),
            options: SubOptions {
                info: json_payload(result.info, &result.b64info).map_err(bad)?,
                data: json_payload(result.data, &result.b64data).map_err(bad)?,
                overrides: overrides(result.r#override),
            },
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
        let answer: pb::PublishResponse = self
            .ask(&endpoint, Call::Publish, request)
            .await
            .map_err(|(told, _)| told)?;
        if let Some(r) = Refusal::from_answer(answer.error.as_ref(), answer.disconnect.as_ref()) {
            return Err(r);
        }
        let mut result = answer.result.unwrap_or_default();
        let replaced = json_payload(std::mem::take(&mut result.data), &result.b64data)
            .map_err(|why| self.garbage(&endpoint, Call::Publish, why))?;
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
        let answer: pb::RpcResponse = self
            .ask(&endpoint, Call::Rpc, request)
            .await
            .map_err(|(told, _)| told)?;
        if let Some(r) = Refusal::from_answer(answer.error.as_ref(), answer.disconnect.as_ref()) {
            return Err(r);
        }
        let result = answer.result.unwrap_or_default();
        let data = json_payload(result.data, &result.b64data)
            .map_err(|why| self.garbage(&endpoint, Call::Rpc, why))?;
        Ok(ReplyBody::Rpc(data))
    }

    /// At a subscription's expiry, with a sub_refresh proxy: asks whether
    /// it goes on. `false`: it ends (the caller unsubscribes it).
    pub(super) async fn sub_refresh_by_proxy(
        &mut self,
        endpoint: Arc<Endpoint>,
        channel: &str,
    ) -> bool {
        let request = pb::SubRefreshRequest {
            user: self.user_name(),
            channel: channel.to_string(),
            meta: self.meta_for(&endpoint),
            ..Default::default()
        };
        let answer: Result<pb::SubRefreshResponse, _> =
            self.ask(&endpoint, Call::SubRefresh, request).await;
        let Some(state) = self.subs.get_mut(channel) else {
            return true;
        };
        let result = match answer {
            Ok(answer) => match answer.result {
                Some(result) if !result.expired => result,
                _ => return false,
            },
            Err(_) => {
                state.expires_at = Some(now_unix() + RETRY_REFRESH_IN);
                return true;
            }
        };
        if result.expire_at <= now_unix() {
            return false;
        }
        state.expires_at = Some(result.expire_at);
        if let Ok(Some(info)) = json_payload(result.info, &result.b64info) {
            state.chan_info = Some(info);
        }
        true
    }
}

fn overrides(o: Option<pb::SubscribeOptionOverride>) -> Overrides {
    let Some(o) = o else {
        return Overrides::default();
    };
    let value = |v: Option<pb::BoolValue>| v.map(|b| b.value);
    Overrides {
        presence: value(o.presence),
        join_leave: value(o.join_leave),
        force_push_join_leave: value(o.force_push_join_leave),
        force_recovery: value(o.force_recovery),
        force_positioning: value(o.force_positioning),
    }
}
