//! The unidirectional HTTP transports: `uni_http_stream` (POST; the body is
//! the connect request, the response one JSON push per line) and `uni_sse`
//! (GET with the connect request in `cf_connect`, or POST with it as the
//! body; the response an event stream, one push per `data:` event). The
//! connection lives as long as the response: a task runs the session's
//! queue and timers into the response body, through a small bounded
//! channel, so a client that stops reading fills its queue and is closed
//! as too slow (3008) like a WebSocket one.

use std::collections::{HashMap, VecDeque};
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::task::Poll;

use axum::body::{Body, Bytes};
use axum::extract::{ConnectInfo, Query, State};
use axum::http::{header, HeaderMap, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Extension;
use herald_protocol::reply::Push;
use herald_protocol::Disconnect;
use tokio::sync::mpsc;

use crate::frame::Encoding;
use crate::metrics::Counters;
use crate::node::Node;
use crate::session::{self, Item, Session};

/// Chunks waiting for the HTTP connection; the session's queue holds the
/// rest.
const CHUNKS: usize = 16;

/// How pushes are framed in the response.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Style {
    /// One JSON object per line.
    Lines,
    /// One `data:` event per push.
    Sse,
}

impl Style {
    fn chunk(self, json: &[u8]) -> Bytes {
        let mut out = Vec::with_capacity(json.len() + 8);
        if self == Style::Sse {
            out.extend_from_slice(b"data: ");
        }
        out.extend_from_slice(json);
        out.extend_from_slice(if self == Style::Sse { b"\n\n" } else { b"\n" });
        Bytes::from(out)
    }

    fn content_type(self) -> &'static str {
        match self {
            Style::Lines => "application/json",
            Style::Sse => "text/event-stream",
        }
    }
}

type Peer = Option<Extension<ConnectInfo<SocketAddr>>>;

/// `uni_http_stream`: POST with the connect request as the body.
pub async fn uni_http_stream(
    State(node): State<Arc<Node>>,
    peer: Peer,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let limit = node.config.uni_http_stream.max_request_body_size;
    let timeout = node.config.http_server.request_body_timeout.0;
    match crate::body::read(body, limit, timeout).await {
        Ok(request) => start(node, peer, headers, request, limit, Style::Lines).await,
        Err(refused) => refused,
    }
}

/// `uni_sse`: GET with the connect request in `cf_connect`, or POST with
/// it as the body.
pub async fn uni_sse(
    State(node): State<Arc<Node>>,
    peer: Peer,
    method: Method,
    Query(query): Query<HashMap<String, String>>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let limit = node.config.uni_sse.max_request_body_size;
    let request = if method == Method::GET {
        Bytes::from(query.get("cf_connect").cloned().unwrap_or_default())
    } else {
        let timeout = node.config.http_server.request_body_timeout.0;
        match crate::body::read(body, limit, timeout).await {
            Ok(request) => request,
            Err(refused) => return refused,
        }
    };
    start(node, peer, headers, request, limit, Style::Sse).await
}

async fn start(
    node: Arc<Node>,
    peer: Peer,
    headers: HeaderMap,
    request: Bytes,
    limit: usize,
    style: Style,
) -> Response {
    let peer = peer.map(|Extension(ConnectInfo(p))| p);
    if let Some(refused) = super::websocket::refusal(&node, &headers, peer) {
        return refused;
    }
    if request.len() > limit {
        return (StatusCode::PAYLOAD_TOO_LARGE, "connect request too large").into_response();
    }
    if request.is_empty() {
        return (StatusCode::BAD_REQUEST, "a connect request is required").into_response();
    }
    Counters::incr(&node.counters.connections_accepted);
    Counters::incr(&node.counters.messages_in);
    Counters::add(&node.counters.bytes_in, request.len() as u64);
    let transport = match style {
        Style::Lines => "uni_http_stream",
        Style::Sse => "uni_sse",
    };
    let origin = session::Peer::new(&node, transport, &headers);
    let mut session = Session::new(node.clone(), Encoding::UniJson, origin);
    if let Err(d) = Box::pin(session.handle_frame(&request)).await {
        Box::pin(session.close(Some(&d))).await;
        if d.code == Disconnect::bad_request().code {
            // Not a connect request at all.
            return (StatusCode::BAD_REQUEST, d.reason).into_response();
        }
        // Refused (a bad token, say): said as the stream's only push.
        return streamed(style, Body::from(disconnect_chunk(style, d)));
    }
    let (tx, rx) = mpsc::channel::<Result<Bytes, Infallible>>(CHUNKS);
    let tracker = node.tracker().clone();
    tracker.spawn(pump(node, session, tx, style));
    let mut rx = rx;
    let body = Body::from_stream(futures_util::stream::poll_fn(move |cx| rx.poll_recv(cx)));
    streamed(style, body)
}

fn streamed(style: Style, body: Body) -> Response {
    (
        [
            (header::CONTENT_TYPE, style.content_type()),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        body,
    )
        .into_response()
}

/// A last `{"disconnect":…}` push, framed.
fn disconnect_chunk(style: Style, d: Disconnect) -> Bytes {
    let push = Push::Disconnect {
        reconnect: d.reconnect(),
        code: d.code,
        reason: d.reason,
    };
    Encoding::UniJson
        .push(&push)
        .map(|frame| style.chunk(frame.as_bytes()))
        .unwrap_or_default()
}

/// Runs the session into the response until either ends; a session that
/// ends says why with a last `{"disconnect":…}` push.
async fn pump(
    node: Arc<Node>,
    mut session: Session,
    tx: mpsc::Sender<Result<Bytes, Infallible>>,
    style: Style,
) {
    let outbox = session.outbox().clone();
    let mut items = VecDeque::new();
    let ended: Option<Disconnect> = 'run: loop {
        let deadline = session.next_deadline();
        let queued = std::future::poll_fn(|cx| {
            if outbox.wakes(cx).queued {
                Poll::Ready(())
            } else {
                Poll::Pending
            }
        });
        let timer = async {
            match deadline {
                Some(at) => tokio::time::sleep_until(at).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = node.shutdown().cancelled() => break Some(Disconnect::shutdown()),
            _ = tx.closed() => break None,
            _ = timer => {
                if let Err(d) = Box::pin(session.on_deadline()).await {
                    break Some(d);
                }
            }
            _ = queued => {
                if outbox.drain(&mut items) {
                    Counters::incr(&node.counters.slow_disconnects);
                    break Some(Disconnect::slow());
                }
                for item in items.drain(..) {
                    match item {
                        Item::Frame(frame) => {
                            let chunk = style.chunk(frame.as_bytes());
                            Counters::incr(&node.counters.messages_out);
                            Counters::add(&node.counters.bytes_out, chunk.len() as u64);
                            if tx.send(Ok(chunk)).await.is_err() {
                                break 'run None;
                            }
                        }
                        Item::Control(control) => {
                            if let Err(d) = Box::pin(session.handle_control(*control)).await {
                                break 'run Some(d);
                            }
                        }
                    }
                }
            }
        }
    };
    if let Some(d) = &ended {
        let _ = tx.try_send(Ok(disconnect_chunk(style, d.clone())));
    }
    Box::pin(session.close(ended.as_ref())).await;
}
