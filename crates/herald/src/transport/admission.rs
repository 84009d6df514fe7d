//! Whether a client may come in, asked by every transport before it does
//! any work: the node's and the address's connection rates, the origin,
//! shutdown.

use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};

use crate::metrics::Counters;
use crate::node::Node;

/// Why a new connection may not come in, as the response that says so:
/// the node's and its address's connection rates, its origin, shutdown.
/// Every transport asks.
pub(crate) fn refusal(
    node: &Node,
    headers: &HeaderMap,
    peer: Option<std::net::SocketAddr>,
) -> Option<Response> {
    if !node.connect_limits.node.allow() {
        Counters::incr(&node.counters.connections_refused_by_rate);
        return Some((StatusCode::SERVICE_UNAVAILABLE, "too many new connections").into_response());
    }
    request_refusal(node, headers, peer)
}

/// Why a request from a client is refused, if it is: its address's rate
/// (`client.connection_rate_limit_per_ip`), its origin, shutdown.
pub(crate) fn request_refusal(
    node: &Node,
    headers: &HeaderMap,
    peer: Option<std::net::SocketAddr>,
) -> Option<Response> {
    if let Some(peer) = peer {
        if !node.connect_limits.per_ip.allow(peer.ip()) {
            Counters::incr(&node.counters.connections_refused_by_rate);
            return Some(
                (
                    StatusCode::TOO_MANY_REQUESTS,
                    "too many new connections from this address",
                )
                    .into_response(),
            );
        }
    }
    if !node.origins().allows(headers) {
        tracing::info!(
            origin = ?headers.get("origin"),
            "connection from a disallowed origin refused: to let it in, add it to client.allowed_origins"
        );
        return Some((StatusCode::FORBIDDEN, "origin not allowed").into_response());
    }
    if node.shutdown().is_cancelled() {
        return Some((StatusCode::SERVICE_UNAVAILABLE, "shutting down").into_response());
    }
    None
}
