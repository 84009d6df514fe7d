//! The emulation endpoint (`emulation.handler_prefix`, `/emulation`): a
//! client of an emulated transport (`http_stream`, `sse`) posts its
//! commands here, as `{"node", "session", "data"}` (JSON; `data` the
//! commands as a string) or a Protobuf `EmulationRequest` (with
//! `Content-Type: application/octet-stream`). The connection is found by
//! its session on its node — here, or through the broker on another node
//! of the cluster — and handles the commands as if they came over its
//! stream; replies go out there. 204 when handed on, 404 when the node is
//! not in the cluster (the client reconnects), 400 for a request that is
//! not one, 413 when too large.

use std::sync::Arc;

use std::net::SocketAddr;

use axum::body::{Body, Bytes};
use axum::extract::{ConnectInfo, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Extension;
use base64::Engine as _;
use serde::Deserialize;
use serde_json::value::RawValue;

use crate::hub::Control;
use crate::metrics::Counters;
use crate::node::Node;
use crate::wire::control::{Action, Target};

/// A JSON emulation request.
#[derive(Deserialize)]
struct Request<'a> {
    #[serde(default)]
    node: String,
    #[serde(default)]
    session: String,
    #[serde(borrow)]
    data: Option<&'a RawValue>,
}

pub async fn emulation(
    State(node): State<Arc<Node>>,
    peer: Option<Extension<ConnectInfo<SocketAddr>>>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    // Every request counts towards its address's connection rate
    // (`client.connection_rate_limit_per_ip`), and a page must be of an
    // allowed origin.
    let peer = peer.map(|Extension(ConnectInfo(p))| p);
    if let Some(refused) = super::admission::request_refusal(&node, &headers, peer) {
        return refused;
    }
    let limit = node.config.emulation.max_request_body_size;
    let timeout = node.config.http_server.request_body_timeout.0;
    let body = match crate::body::read(body, limit, timeout).await {
        Ok(body) => body,
        Err(refused) => return refused,
    };
    let parsed = if super::stream::binary(&headers) {
        herald_protocol::protobuf::decode_emulation_request(&body)
            .map_err(|e| format!("not an emulation request: {e}"))
    } else {
        parse_json(&body)
    };
    let (to, session, data) = match parsed {
        Ok(request) => request,
        Err(why) => return (StatusCode::BAD_REQUEST, why).into_response(),
    };
    if session.is_empty() {
        return (StatusCode::BAD_REQUEST, "session is required").into_response();
    }
    Counters::incr(&node.counters.messages_in);
    Counters::add(&node.counters.bytes_in, body.len() as u64);
    let cluster = node.cluster();
    if to == cluster.uid() {
        // A session gone meanwhile ended its stream: nothing to do.
        if let Some(client) = node.hub.by_session(&session) {
            client.control(Control::Emulate(data));
        }
        return StatusCode::NO_CONTENT.into_response();
    }
    if !cluster.nodes().iter().any(|n| n.uid == to) {
        return (StatusCode::NOT_FOUND, "no such node in the cluster").into_response();
    }
    let target = Target {
        session,
        ..Default::default()
    };
    let data = base64::engine::general_purpose::STANDARD.encode(&data);
    let action = Action::Emulate { node: to, data };
    match node.user_command(target, action).await {
        Ok(()) => StatusCode::NO_CONTENT.into_response(),
        Err(_) => StatusCode::SERVICE_UNAVAILABLE.into_response(),
    }
}

/// `(node, session, data)` of a JSON request; `data` is the commands as a
/// string (as the SDKs send them), or a command object.
fn parse_json(body: &[u8]) -> Result<(String, String, Bytes), String> {
    let request: Request =
        serde_json::from_slice(body).map_err(|e| format!("not an emulation request: {e}"))?;
    let raw = request.data.map(RawValue::get).unwrap_or_default();
    let data = match serde_json::from_str::<String>(raw) {
        Ok(text) => Bytes::from(text),
        Err(_) if raw.starts_with('{') => Bytes::copy_from_slice(raw.as_bytes()),
        Err(_) => return Err("data must be the commands, as a string".into()),
    };
    Ok((request.node, request.session, data))
}
