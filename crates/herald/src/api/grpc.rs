//! The gRPC server API: Centrifugo's `CentrifugoApi` service
//! (`proto/api.proto`), on a port of its own. Each call becomes the same
//! [`Request`] the HTTP API makes and runs through the same [`execute`];
//! this module only converts messages. Calls are authorised by metadata
//! `authorization: apikey <grpc_api.key>` when a key is set.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;

use herald_protocol::ClientInfo;
use serde_json::value::RawValue;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tonic::{Request as Call, Response as Answer, Status};

use super::types::{self, Request, Response};
use super::{execute_timed, ApiError};
use crate::auth::Overrides;
use crate::config::{ErrorMode, TlsFiles};
use crate::node::Node;

/// The messages and service generated from `proto/api.proto`.
pub mod proto {
    tonic::include_proto!("centrifugal.centrifugo.api");

    /// The compiled definition, for reflection.
    pub const DESCRIPTOR: &[u8] = tonic::include_file_descriptor_set!("api_descriptor");
}

use proto::centrifugo_api_server::{CentrifugoApi, CentrifugoApiServer};

/// The largest message a gRPC service takes: `configured`, or 4 MiB
/// (gRPC's default) when 0.
pub(crate) fn max_message(configured: usize) -> usize {
    match configured {
        0 => 4 * 1024 * 1024,
        n => n,
    }
}

/// Binds a gRPC listener on `address` (all interfaces when empty) and
/// `port` (0 picks a free one).
pub async fn bind(address: &str, port: u16) -> std::io::Result<TcpListener> {
    let host = if address.is_empty() {
        "0.0.0.0"
    } else {
        address
    };
    TcpListener::bind(format!("{host}:{port}")).await
}

/// A gRPC server, over TLS with `tls`.
pub(crate) fn builder(
    tls: Option<TlsFiles>,
) -> Result<tonic::transport::Server, tonic::transport::Error> {
    let mut builder = tonic::transport::Server::builder();
    if let Some(tls) = tls {
        let mut server_tls = tonic::transport::ServerTlsConfig::new()
            .identity(tonic::transport::Identity::from_pem(&tls.cert, &tls.key));
        if let Some(ca) = &tls.client_ca {
            server_tls = server_tls.client_ca_root(tonic::transport::Certificate::from_pem(ca));
        }
        builder = builder.tls_config(server_tls)?;
    }
    Ok(builder)
}

/// Serves the gRPC API on `listener` (over TLS with `tls`) until `stop`.
pub async fn serve(
    node: Arc<Node>,
    listener: TcpListener,
    tls: Option<TlsFiles>,
    stop: CancellationToken,
) -> Result<(), tonic::transport::Error> {
    let config = &node.config.grpc_api;
    let max = max_message(config.max_receive_message_size);
    let service = CentrifugoApiServer::new(Service { node: node.clone() })
        .max_decoding_message_size(max)
        .max_encoding_message_size(usize::MAX);
    let key = config.key.expose().to_string();
    let service = tonic::service::interceptor::InterceptedService::new(service, move |call| {
        authorise(&key, call)
    });
    let mut router = builder(tls)?.add_service(service);
    if config.reflection {
        let reflection = tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(proto::DESCRIPTOR)
            .build_v1();
        match reflection {
            Ok(reflection) => router = router.add_service(reflection),
            Err(e) => tracing::warn!(error = %e, "gRPC reflection not served"),
        }
    }
    let incoming = tonic::transport::server::TcpIncoming::from(listener);
    router
        .serve_with_incoming_shutdown(incoming, stop.cancelled_owned())
        .await
}

/// The listening address, for the log.
pub fn describe(listener: &TcpListener) -> Option<SocketAddr> {
    listener.local_addr().ok()
}

/// Checks `authorization: apikey <key>` (compared in constant time) when a
/// key is set.
fn authorise(key: &str, call: Call<()>) -> Result<Call<()>, Status> {
    use subtle::ConstantTimeEq;
    if key.is_empty() {
        return Ok(call);
    }
    let given = call
        .metadata()
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split_once(' '))
        .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("apikey"))
        .map(|(_, value)| value.trim());
    match given {
        Some(value) if bool::from(value.as_bytes().ct_eq(key.as_bytes())) => Ok(call),
        _ => Err(Status::unauthenticated("a valid API key is required")),
    }
}

struct Service {
    node: Arc<Node>,
}

impl Service {
    /// Whether errors are answered as gRPC statuses: `grpc_api.error_mode`,
    /// or the call's metadata `x-centrifugo-error-mode: transport`.
    fn transport_errors<T>(&self, call: &Call<T>) -> bool {
        self.node.config.grpc_api.error_mode == ErrorMode::Transport
            || call
                .metadata()
                .get("x-centrifugo-error-mode")
                .is_some_and(|v| v.as_bytes() == b"transport")
    }

    /// Runs a call: reads its request, executes it, answers with `answer`'s
    /// reply for the result or the error in the reply (or as a status).
    async fn run<T, R>(
        &self,
        call: Call<T>,
        read: impl FnOnce(T) -> Result<Request, ApiError>,
        answer: impl FnOnce(Result<Response, ApiError>) -> R,
    ) -> Result<Answer<R>, Status> {
        let transport = self.transport_errors(&call);
        let outcome = match read(call.into_inner()) {
            Ok(request) => execute_timed(&self.node, request, "grpc").await,
            Err(e) => Err(e),
        };
        match outcome {
            Err(e) if transport => Err(status(&e)),
            outcome => Ok(Answer::new(answer(outcome))),
        }
    }
}

/// The gRPC status of an error in the transport error mode, as Centrifugo
/// maps codes.
fn status(e: &ApiError) -> Status {
    let (code, message) = e.parts();
    let grpc = match code {
        102 | 104 => tonic::Code::NotFound,
        107 | 108 => tonic::Code::InvalidArgument,
        112 => tonic::Code::OutOfRange,
        113 => tonic::Code::AlreadyExists,
        _ => tonic::Code::Internal,
    };
    Status::new(grpc, message)
}

fn error(e: &ApiError) -> proto::Error {
    let (code, message) = e.parts();
    proto::Error {
        code,
        message: message.to_string(),
    }
}

/// Splits an outcome into a reply's `error` and `result` fields.
fn split<T>(
    outcome: Result<Response, ApiError>,
    result: impl FnOnce(Response) -> Option<T>,
) -> (Option<proto::Error>, Option<T>) {
    match outcome {
        Ok(response) => (None, result(response)),
        Err(e) => (Some(error(&e)), None),
    }
}

/// Raw JSON from bytes; empty bytes are no value.
fn json(bytes: Vec<u8>, field: &str) -> Result<types::Json, ApiError> {
    if bytes.is_empty() {
        return Ok(None);
    }
    String::from_utf8(bytes)
        .ok()
        .and_then(|text| RawValue::from_string(text).ok())
        .map(Some)
        .ok_or_else(|| ApiError::bad_request(format!("{field} must be JSON")))
}

fn bytes_of(json: Option<&bytes::Bytes>) -> Vec<u8> {
    json.map(|b| b.to_vec()).unwrap_or_default()
}

fn position(p: Option<proto::StreamPosition>) -> Option<types::Position> {
    p.map(|p| types::Position {
        offset: p.offset,
        epoch: p.epoch,
    })
}

fn overrides(o: Option<proto::SubscribeOptionOverride>) -> Option<Overrides> {
    o.map(|o| {
        let v = |b: Option<proto::BoolValue>| b.map(|b| b.value);
        Overrides {
            presence: v(o.presence),
            join_leave: v(o.join_leave),
            force_recovery: v(o.force_recovery),
            force_positioning: v(o.force_positioning),
            force_push_join_leave: v(o.force_push_join_leave),
        }
    })
}

fn client_info(info: &ClientInfo) -> proto::ClientInfo {
    proto::ClientInfo {
        user: info.user.clone(),
        client: info.client.clone(),
        conn_info: bytes_of(info.conn_info.as_ref()),
        chan_info: bytes_of(info.chan_info.as_ref()),
    }
}

// Requests.

fn publish(r: proto::PublishRequest) -> Result<Request, ApiError> {
    Ok(Request::Publish(types::PublishRequest {
        channel: r.channel,
        data: json(r.data, "data")?,
        b64data: r.b64data,
        tags: r.tags.into_iter().collect(),
        skip_history: r.skip_history,
        idempotency_key: r.idempotency_key,
        version: r.version,
        version_epoch: r.version_epoch,
        delta: r.delta,
        ..Default::default()
    }))
}

fn broadcast(r: proto::BroadcastRequest) -> Result<Request, ApiError> {
    Ok(Request::Broadcast(types::PublishRequest {
        channels: r.channels,
        data: json(r.data, "data")?,
        b64data: r.b64data,
        tags: r.tags.into_iter().collect(),
        skip_history: r.skip_history,
        idempotency_key: r.idempotency_key,
        version: r.version,
        version_epoch: r.version_epoch,
        delta: r.delta,
        ..Default::default()
    }))
}

fn subscribe(r: proto::SubscribeRequest) -> Result<Request, ApiError> {
    Ok(Request::Subscribe(types::SubscribeRequest {
        user: r.user,
        client: r.client,
        session: r.session,
        channel: r.channel,
        info: json(r.info, "info")?,
        b64info: r.b64info,
        data: json(r.data, "data")?,
        b64data: r.b64data,
        expire_at: r.expire_at,
        recover_since: position(r.recover_since),
        overrides: overrides(r.r#override),
    }))
}

fn unsubscribe(r: proto::UnsubscribeRequest) -> Result<Request, ApiError> {
    Ok(Request::Unsubscribe(types::UnsubscribeRequest {
        user: r.user,
        client: r.client,
        session: r.session,
        channel: r.channel,
    }))
}

fn disconnect(r: proto::DisconnectRequest) -> Result<Request, ApiError> {
    Ok(Request::Disconnect(types::DisconnectRequest {
        user: r.user,
        client: r.client,
        session: r.session,
        whitelist: r.whitelist,
        disconnect: r.disconnect.map(|d| types::DisconnectCode {
            code: d.code,
            reason: d.reason,
        }),
    }))
}

fn refresh(r: proto::RefreshRequest) -> Result<Request, ApiError> {
    Ok(Request::Refresh(types::RefreshRequest {
        user: r.user,
        client: r.client,
        session: r.session,
        expired: r.expired,
        expire_at: r.expire_at,
        info: json(r.info, "info")?,
    }))
}

fn block_user(r: proto::BlockUserRequest) -> Result<Request, ApiError> {
    Ok(Request::BlockUser(types::BlockUserRequest {
        user: r.user,
        expire_at: r.expire_at,
    }))
}

fn unblock_user(r: proto::UnblockUserRequest) -> Result<Request, ApiError> {
    Ok(Request::UnblockUser(types::UnblockUserRequest {
        user: r.user,
    }))
}

fn revoke_token(r: proto::RevokeTokenRequest) -> Result<Request, ApiError> {
    Ok(Request::RevokeToken(types::RevokeTokenRequest {
        uid: r.uid,
        expire_at: r.expire_at,
    }))
}

fn invalidate_user_tokens(r: proto::InvalidateUserTokensRequest) -> Result<Request, ApiError> {
    Ok(Request::InvalidateUserTokens(
        types::InvalidateUserTokensRequest {
            user: r.user,
            issued_before: r.issued_before,
            expire_at: r.expire_at,
            channel: r.channel,
        },
    ))
}

fn channel(channel: String) -> types::ChannelRequest {
    types::ChannelRequest { channel }
}

fn history(r: proto::HistoryRequest) -> Result<Request, ApiError> {
    Ok(Request::History(types::HistoryRequest {
        channel: r.channel,
        limit: r.limit.into(),
        since: position(r.since),
        reverse: r.reverse,
    }))
}

fn command(c: proto::Command) -> Result<Request, ApiError> {
    let proto::Command {
        publish: p,
        broadcast: b,
        subscribe: s,
        unsubscribe: u,
        disconnect: d,
        presence: pr,
        presence_stats: ps,
        history: h,
        history_remove: hr,
        info: i,
        refresh: r,
        channels: c,
        block_user: bu,
        unblock_user: ub,
        revoke_token: rt,
        invalidate_user_tokens: it,
    } = c;
    let set = [
        p.is_some(),
        b.is_some(),
        s.is_some(),
        u.is_some(),
        d.is_some(),
        pr.is_some(),
        ps.is_some(),
        h.is_some(),
        hr.is_some(),
        i.is_some(),
        r.is_some(),
        c.is_some(),
        bu.is_some(),
        ub.is_some(),
        rt.is_some(),
        it.is_some(),
    ];
    if set.iter().filter(|s| **s).count() != 1 {
        return Err(ApiError::bad_request(
            "each command needs exactly one method",
        ));
    }
    if let Some(p) = p {
        return publish(p);
    }
    if let Some(b) = b {
        return broadcast(b);
    }
    if let Some(s) = s {
        return subscribe(s);
    }
    if let Some(u) = u {
        return unsubscribe(u);
    }
    if let Some(d) = d {
        return disconnect(d);
    }
    if let Some(pr) = pr {
        return Ok(Request::Presence(channel(pr.channel)));
    }
    if let Some(ps) = ps {
        return Ok(Request::PresenceStats(channel(ps.channel)));
    }
    if let Some(h) = h {
        return history(h);
    }
    if let Some(hr) = hr {
        return Ok(Request::HistoryRemove(channel(hr.channel)));
    }
    if i.is_some() {
        return Ok(Request::Info(types::InfoRequest {}));
    }
    if let Some(r) = r {
        return refresh(r);
    }
    if let Some(r) = bu {
        return block_user(r);
    }
    if let Some(r) = ub {
        return unblock_user(r);
    }
    if let Some(r) = rt {
        return revoke_token(r);
    }
    if let Some(r) = it {
        return invalidate_user_tokens(r);
    }
    let pattern = c.map(|c| c.pattern).unwrap_or_default();
    Ok(Request::Channels(types::ChannelsRequest { pattern }))
}

// Results.

fn publish_result(r: types::PublishResult) -> proto::PublishResult {
    proto::PublishResult {
        offset: r.offset,
        epoch: r.epoch,
    }
}

fn broadcast_result(r: types::BroadcastResult) -> proto::BroadcastResult {
    let responses = r
        .responses
        .into_iter()
        .map(|reply| match reply.0 {
            Ok(result) => proto::PublishResponse {
                error: None,
                result: Some(publish_result(result)),
            },
            Err(e) => proto::PublishResponse {
                error: Some(error(&e)),
                result: None,
            },
        })
        .collect();
    proto::BroadcastResult { responses }
}

fn presence_result(r: types::PresenceResult) -> proto::PresenceResult {
    let presence: HashMap<String, proto::ClientInfo> = r
        .presence
        .iter()
        .map(|(client, info)| (client.clone(), client_info(info)))
        .collect();
    proto::PresenceResult { presence }
}

fn presence_stats_result(r: types::PresenceStatsResult) -> proto::PresenceStatsResult {
    proto::PresenceStatsResult {
        num_clients: r.num_clients,
        num_users: r.num_users,
    }
}

fn history_result(r: types::HistoryResult) -> proto::HistoryResult {
    let publications = r
        .publications
        .iter()
        .map(|p| proto::Publication {
            data: p.data.to_vec(),
            info: p.info.as_deref().map(client_info),
            offset: p.offset,
            tags: p.tags.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
        })
        .collect();
    proto::HistoryResult {
        publications,
        epoch: r.epoch,
        offset: r.offset,
    }
}

fn info_result(r: types::InfoResult) -> proto::InfoResult {
    let u32_of = |n: u64| u32::try_from(n).unwrap_or(u32::MAX);
    let nodes = r
        .nodes
        .into_iter()
        .map(|n| proto::NodeResult {
            uid: n.uid,
            name: n.name,
            version: n.version,
            num_clients: u32_of(n.num_clients),
            num_users: u32_of(n.num_users),
            num_channels: u32_of(n.num_channels),
            uptime: u32_of(n.uptime),
            num_subs: u32_of(n.num_subs),
        })
        .collect();
    proto::InfoResult { nodes }
}

fn channels_result(r: types::ChannelsResult) -> proto::ChannelsResult {
    let channels = r
        .channels
        .into_iter()
        .map(|(name, info)| {
            let info = proto::ChannelInfo {
                num_clients: info.num_clients,
            };
            (name, info)
        })
        .collect();
    proto::ChannelsResult { channels }
}

/// A batch command's reply: the result in the field of its kind.
fn reply(reply: types::BatchReply) -> proto::Reply {
    let mut out = proto::Reply::default();
    let response = match reply.result {
        Ok(response) => response,
        Err(e) => {
            out.error = Some(error(&e));
            return out;
        }
    };
    match (reply.method, response) {
        (_, Response::Publish(r)) => out.publish = Some(publish_result(r)),
        (_, Response::Broadcast(r)) => out.broadcast = Some(broadcast_result(r)),
        (_, Response::Presence(r)) => out.presence = Some(presence_result(r)),
        (_, Response::PresenceStats(r)) => out.presence_stats = Some(presence_stats_result(r)),
        (_, Response::History(r)) => out.history = Some(history_result(r)),
        (_, Response::Channels(r)) => out.channels = Some(channels_result(r)),
        (_, Response::Info(r)) => out.info = Some(info_result(r)),
        // Herald's own HTTP-only methods never come over gRPC.
        (_, Response::Batch(_) | Response::WebhookDeadLetters(_) | Response::WebhookRedrive(_)) => {
        }
        ("subscribe", Response::Empty(_)) => out.subscribe = Some(proto::SubscribeResult {}),
        ("unsubscribe", Response::Empty(_)) => out.unsubscribe = Some(proto::UnsubscribeResult {}),
        ("disconnect", Response::Empty(_)) => out.disconnect = Some(proto::DisconnectResult {}),
        ("refresh", Response::Empty(_)) => out.refresh = Some(proto::RefreshResult {}),
        ("block_user", Response::Empty(_)) => out.block_user = Some(proto::BlockUserResult {}),
        ("unblock_user", Response::Empty(_)) => {
            out.unblock_user = Some(proto::UnblockUserResult {})
        }
        ("revoke_token", Response::Empty(_)) => {
            out.revoke_token = Some(proto::RevokeTokenResult {})
        }
        ("invalidate_user_tokens", Response::Empty(_)) => {
            out.invalidate_user_tokens = Some(proto::InvalidateUserTokensResult {})
        }
        (_, Response::Empty(_)) => out.history_remove = Some(proto::HistoryRemoveResult {}),
    }
    out
}

/// The service: each unary method reads its message into a [`Request`]
/// with `read`, and puts a result of its kind into its reply with `result`.
macro_rules! service {
    ($($name:ident($req:ident) -> $resp:ident { $read:expr, $result:expr })*) => {
        #[tonic::async_trait]
        impl CentrifugoApi for Service {
            $(
                async fn $name(
                    &self,
                    call: Call<proto::$req>,
                ) -> Result<Answer<proto::$resp>, Status> {
                    self.run(call, $read, |outcome| {
                        let (error, result) = split(outcome, $result);
                        proto::$resp { error, result }
                    })
                    .await
                }
            )*

            async fn batch(
                &self,
                call: Call<proto::BatchRequest>,
            ) -> Result<Answer<proto::BatchResponse>, Status> {
                let read = |r: proto::BatchRequest| {
                    Ok(Request::Batch {
                        commands: r.commands.into_iter().map(command).collect(),
                        parallel: r.parallel,
                    })
                };
                self.run(call, read, |outcome| {
                    let replies = match outcome {
                        Ok(Response::Batch(b)) => b.replies.into_iter().map(reply).collect(),
                        _ => Vec::new(),
                    };
                    proto::BatchResponse { replies }
                })
                .await
            }
        }
    };
}

service! {
    publish(PublishRequest) -> PublishResponse {
        publish,
        |r| match r { Response::Publish(r) => Some(publish_result(r)), _ => None }
    }
    broadcast(BroadcastRequest) -> BroadcastResponse {
        broadcast,
        |r| match r { Response::Broadcast(r) => Some(broadcast_result(r)), _ => None }
    }
    subscribe(SubscribeRequest) -> SubscribeResponse {
        subscribe,
        |_| Some(proto::SubscribeResult {})
    }
    unsubscribe(UnsubscribeRequest) -> UnsubscribeResponse {
        unsubscribe,
        |_| Some(proto::UnsubscribeResult {})
    }
    disconnect(DisconnectRequest) -> DisconnectResponse {
        disconnect,
        |_| Some(proto::DisconnectResult {})
    }
    refresh(RefreshRequest) -> RefreshResponse {
        refresh,
        |_| Some(proto::RefreshResult {})
    }
    presence(PresenceRequest) -> PresenceResponse {
        |r: proto::PresenceRequest| Ok(Request::Presence(channel(r.channel))),
        |r| match r { Response::Presence(r) => Some(presence_result(r)), _ => None }
    }
    presence_stats(PresenceStatsRequest) -> PresenceStatsResponse {
        |r: proto::PresenceStatsRequest| Ok(Request::PresenceStats(channel(r.channel))),
        |r| match r { Response::PresenceStats(r) => Some(presence_stats_result(r)), _ => None }
    }
    history(HistoryRequest) -> HistoryResponse {
        history,
        |r| match r { Response::History(r) => Some(history_result(r)), _ => None }
    }
    history_remove(HistoryRemoveRequest) -> HistoryRemoveResponse {
        |r: proto::HistoryRemoveRequest| Ok(Request::HistoryRemove(channel(r.channel))),
        |_| Some(proto::HistoryRemoveResult {})
    }
    info(InfoRequest) -> InfoResponse {
        |_| Ok(Request::Info(types::InfoRequest {})),
        |r| match r { Response::Info(r) => Some(info_result(r)), _ => None }
    }
    block_user(BlockUserRequest) -> BlockUserResponse {
        block_user,
        |_| Some(proto::BlockUserResult {})
    }
    unblock_user(UnblockUserRequest) -> UnblockUserResponse {
        unblock_user,
        |_| Some(proto::UnblockUserResult {})
    }
    revoke_token(RevokeTokenRequest) -> RevokeTokenResponse {
        revoke_token,
        |_| Some(proto::RevokeTokenResult {})
    }
    invalidate_user_tokens(InvalidateUserTokensRequest) -> InvalidateUserTokensResponse {
        invalidate_user_tokens,
        |_| Some(proto::InvalidateUserTokensResult {})
    }
    channels(ChannelsRequest) -> ChannelsResponse {
        |r: proto::ChannelsRequest| Ok(Request::Channels(types::ChannelsRequest { pattern: r.pattern })),
        |r| match r { Response::Channels(r) => Some(channels_result(r)), _ => None }
    }
}
