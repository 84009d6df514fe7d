//! The WebSocket opening handshake (RFC 6455 §4.2) over HTTP/1.1. Done here
//! rather than by a framework extractor so that the connection's task owns
//! the stream under the WebSocket: when it closes a connection it can go
//! on reading, and dropping, what the client still sends (the rest of an
//! oversized message), so that the client reads the Close frame instead of
//! a reset.

use std::net::SocketAddr;

use axum::body::Body;
use axum::extract::{ConnectInfo, FromRequestParts};
use axum::http::header::{self, HeaderMap, HeaderValue};
use axum::http::request::Parts;
use axum::http::{Method, StatusCode};
use axum::response::{IntoResponse, Response};
use hyper::upgrade::{OnUpgrade, Upgraded};
use hyper_util::rt::TokioIo;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::{Role, WebSocketConfig};
use tokio_tungstenite::WebSocketStream;

use super::deflate::{self, Agreed, Wire};
use crate::frame::Encoding;

/// A server-side WebSocket over an upgraded HTTP connection, compressed
/// when both sides agreed to.
pub type Socket = WebSocketStream<Wire<TokioIo<Upgraded>>>;

/// A valid upgrade request, ready to be accepted.
pub struct Upgrade {
    key: HeaderValue,
    on_upgrade: OnUpgrade,
    /// The remote address, as the accept loop recorded it.
    peer: Option<SocketAddr>,
    /// The client asked for the Protobuf format: by the WebSocket
    /// subprotocol (then it is named in the answer) or in the query.
    protobuf: Option<Asked>,
    /// The permessage-deflate offer this server can take, if the client
    /// made one.
    deflate: Option<Agreed>,
}

/// How a client asked for Protobuf.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Asked {
    Subprotocol,
    Query,
}

/// The subprotocol the official SDKs offer for the Protobuf format.
const PROTOBUF_SUBPROTOCOL: &str = "centrifuge-protobuf";

/// Whether the request asks for Protobuf: the subprotocol, or
/// `format=protobuf` (`cf_protocol=protobuf` in older SDKs) in the query.
fn asks_protobuf(parts: &Parts) -> Option<Asked> {
    if lists(
        &parts.headers,
        header::SEC_WEBSOCKET_PROTOCOL,
        PROTOBUF_SUBPROTOCOL,
    ) {
        return Some(Asked::Subprotocol);
    }
    let query = parts.uri.query().unwrap_or_default();
    query
        .split('&')
        .filter_map(|pair| pair.split_once('='))
        .any(|(k, v)| (k == "format" || k == "cf_protocol") && v == "protobuf")
        .then_some(Asked::Query)
}

/// Whether `name` is a comma-separated list holding `token` (any case).
fn lists(headers: &HeaderMap, name: header::HeaderName, token: &str) -> bool {
    headers
        .get_all(name)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| t.trim().eq_ignore_ascii_case(token))
}

fn refuse(status: StatusCode, why: &'static str) -> Response {
    (status, why).into_response()
}

impl<S: Send + Sync> FromRequestParts<S> for Upgrade {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Response> {
        if parts.method != Method::GET {
            return Err(refuse(
                StatusCode::METHOD_NOT_ALLOWED,
                "a WebSocket opens with GET",
            ));
        }
        let headers = &parts.headers;
        if !lists(headers, header::CONNECTION, "upgrade")
            || !lists(headers, header::UPGRADE, "websocket")
        {
            return Err(refuse(
                StatusCode::UPGRADE_REQUIRED,
                "a WebSocket upgrade is required here",
            ));
        }
        if headers
            .get(header::SEC_WEBSOCKET_VERSION)
            .map(|v| v.as_bytes())
            != Some(b"13")
        {
            let mut refused = refuse(
                StatusCode::UPGRADE_REQUIRED,
                "unsupported WebSocket version",
            );
            refused.headers_mut().insert(
                header::SEC_WEBSOCKET_VERSION,
                HeaderValue::from_static("13"),
            );
            return Err(refused);
        }
        let Some(key) = headers.get(header::SEC_WEBSOCKET_KEY).cloned() else {
            return Err(refuse(
                StatusCode::BAD_REQUEST,
                "Sec-WebSocket-Key is missing",
            ));
        };
        let Some(on_upgrade) = parts.extensions.remove::<OnUpgrade>() else {
            // Not an HTTP/1.1 connection that can be taken over.
            return Err(refuse(
                StatusCode::UPGRADE_REQUIRED,
                "this connection cannot be upgraded",
            ));
        };
        let peer = parts
            .extensions
            .get::<ConnectInfo<SocketAddr>>()
            .map(|ConnectInfo(peer)| *peer);
        Ok(Self {
            key,
            on_upgrade,
            peer,
            protobuf: asks_protobuf(parts),
            deflate: deflate::agree(
                headers
                    .get_all(header::SEC_WEBSOCKET_EXTENSIONS)
                    .iter()
                    .filter_map(|v| v.to_str().ok()),
            ),
        })
    }
}

impl Upgrade {
    /// Where the request came from, when known.
    pub fn peer(&self) -> Option<SocketAddr> {
        self.peer
    }

    /// The format the client asked for.
    pub fn encoding(&self) -> Encoding {
        if self.protobuf.is_some() {
            Encoding::Protobuf
        } else {
            Encoding::Json
        }
    }

    /// Answers 101 and, once the connection is handed over, runs `serve`
    /// on the WebSocket in a task of its own. With `compression` set and
    /// offered by the client, the connection uses permessage-deflate.
    pub fn accept<F, Fut>(
        self,
        config: WebSocketConfig,
        compression: Option<deflate::Settings>,
        serve: F,
    ) -> Response
    where
        F: FnOnce(Socket) -> Fut + Send + 'static,
        Fut: std::future::Future<Output = ()> + Send + 'static,
    {
        let accept = derive_accept_key(self.key.as_bytes());
        let on_upgrade = self.on_upgrade;
        let compressed = compression.zip(self.deflate);
        // The handshake's task ends once the connection is open: the
        // connection's own task holds only what the connection needs, not
        // the handshake's state beside it.
        tokio::spawn(async move {
            let Ok(upgraded) = on_upgrade.await else {
                return; // The client went away during the handshake.
            };
            let io = TokioIo::new(upgraded);
            let wire = match compressed {
                Some((settings, agreed)) => Wire::compressed(io, settings, agreed),
                None => Wire::plain(io),
            };
            let socket = WebSocketStream::from_raw_socket(wire, Role::Server, Some(config)).await;
            tokio::spawn(serve(socket));
        });
        let mut response = Response::new(Body::empty());
        *response.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
        let headers = response.headers_mut();
        headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
        headers.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
        if let Ok(accept) = HeaderValue::from_str(&accept) {
            headers.insert(header::SEC_WEBSOCKET_ACCEPT, accept);
        }
        if self.protobuf == Some(Asked::Subprotocol) {
            headers.insert(
                header::SEC_WEBSOCKET_PROTOCOL,
                HeaderValue::from_static(PROTOBUF_SUBPROTOCOL),
            );
        }
        if let Some((_, agreed)) = compressed {
            if let Ok(answer) = HeaderValue::from_str(&agreed.answer()) {
                headers.insert(header::SEC_WEBSOCKET_EXTENSIONS, answer);
            }
        }
        response
    }
}
