//! The HTTP streaming transports. Unidirectional: `uni_http_stream` (POST;
//! the body is the connect request, the response one JSON push per line)
//! and `uni_sse` (GET with the connect request in `cf_connect`, or POST
//! with it as the body; the response an event stream, one push per `data:`
//! event). Bidirectional, emulated: `http_stream` (POST; the body holds the
//! connect command, JSON or — with `Content-Type: application/octet-stream`
//! — Protobuf; the response the replies and pushes, one JSON per line or
//! length-prefixed Protobuf) and `sse` (like `uni_sse`, with replies); the
//! client's later commands come through the emulation endpoint
//! (`emulation.rs`), which finds the connection by the session its connect
//! reply named. The connection lives as long as the response: a task runs
//! the session's queue and timers into the response body, through a small
//! bounded channel, so a client that stops reading fills its queue and is
//! closed as too slow (3008) like a WebSocket one.

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
use tokio::time::Instant;

use crate::frame::{Encoding, Frame};
use crate::hub::Control;
use crate::metrics::Counters;
use crate::node::Node;
use crate::session::{self, Item, Outbox, Session};
use crate::transport::wake::Coalesce;

/// Chunks waiting for the HTTP connection; the session's queue holds the
/// rest.
const CHUNKS: usize = 16;

/// How messages are framed in the response.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Style {
    /// One JSON object per line.
    Lines,
    /// One `data:` event per message.
    Sse,
    /// Protobuf messages, each with its length before it, as they are.
    Binary,
}

impl Style {
    fn chunk(self, message: &[u8]) -> Bytes {
        let (before, after): (&[u8], &[u8]) = match self {
            Style::Lines => (b"", b"\n"),
            Style::Sse => (b"data: ", b"\n\n"),
            Style::Binary => (b"", b""),
        };
        let mut out = Vec::with_capacity(message.len() + before.len() + after.len());
        out.extend_from_slice(before);
        out.extend_from_slice(message);
        out.extend_from_slice(after);
        Bytes::from(out)
    }

    fn content_type(self) -> &'static str {
        match self {
            Style::Lines => "application/json",
            Style::Sse => "text/event-stream",
            Style::Binary => "application/octet-stream",
        }
    }
}

/// One of the four transports.
#[derive(Debug, Clone, Copy)]
struct Kind {
    name: &'static str,
    style: Style,
    encoding: Encoding,
    /// Bidirectional: the connection gets a session for emulation requests.
    emulated: bool,
}

impl Kind {
    const UNI_HTTP_STREAM: Kind = Kind {
        name: "uni_http_stream",
        style: Style::Lines,
        encoding: Encoding::UniJson,
        emulated: false,
    };
    const UNI_SSE: Kind = Kind {
        name: "uni_sse",
        style: Style::Sse,
        encoding: Encoding::UniJson,
        emulated: false,
    };
    const SSE: Kind = Kind {
        name: "sse",
        style: Style::Sse,
        encoding: Encoding::Json,
        emulated: true,
    };

    fn http_stream(headers: &HeaderMap) -> Kind {
        let (style, encoding) = match binary(headers) {
            true => (Style::Binary, Encoding::Protobuf),
            false => (Style::Lines, Encoding::Json),
        };
        Kind {
            name: "http_stream",
            style,
            encoding,
            emulated: true,
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
    posted(node, peer, headers, body, limit, Kind::UNI_HTTP_STREAM).await
}

/// `http_stream`: POST with the connect command as the body.
pub async fn http_stream(
    State(node): State<Arc<Node>>,
    peer: Peer,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let limit = node.config.http_stream.max_request_body_size;
    let kind = Kind::http_stream(&headers);
    posted(node, peer, headers, body, limit, kind).await
}

async fn posted(
    node: Arc<Node>,
    peer: Peer,
    headers: HeaderMap,
    body: Body,
    limit: usize,
    kind: Kind,
) -> Response {
    let timeout = node.config.http_server.request_body_timeout.0;
    match crate::body::read(body, limit, timeout).await {
        Ok(request) => start(node, peer, headers, request, limit, kind).await,
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
    event_stream(
        node,
        peer,
        method,
        query,
        headers,
        body,
        limit,
        Kind::UNI_SSE,
    )
    .await
}

/// `sse`: GET with the connect command in `cf_connect`, or POST with it as
/// the body.
pub async fn sse(
    State(node): State<Arc<Node>>,
    peer: Peer,
    method: Method,
    Query(query): Query<HashMap<String, String>>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let limit = node.config.sse.max_request_body_size;
    event_stream(node, peer, method, query, headers, body, limit, Kind::SSE).await
}

#[allow(clippy::too_many_arguments)]
async fn event_stream(
    node: Arc<Node>,
    peer: Peer,
    method: Method,
    query: HashMap<String, String>,
    headers: HeaderMap,
    body: Body,
    limit: usize,
    kind: Kind,
) -> Response {
    if method == Method::GET {
        let request = Bytes::from(query.get("cf_connect").cloned().unwrap_or_default());
        start(node, peer, headers, request, limit, kind).await
    } else {
        posted(node, peer, headers, body, limit, kind).await
    }
}

async fn start(
    node: Arc<Node>,
    peer: Peer,
    headers: HeaderMap,
    request: Bytes,
    limit: usize,
    kind: Kind,
) -> Response {
    let peer = peer.map(|Extension(ConnectInfo(p))| p);
    if let Some(refused) = super::admission::refusal(&node, &headers, peer) {
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
    let mut origin = session::Peer::new(&node, kind.name, &headers);
    if kind.emulated {
        // Random and never shown to others (unlike the client id, which
        // presence lists): whoever knows it can send the connection's
        // commands.
        origin.session = Some(uuid::Uuid::new_v4().to_string().into());
    }
    let mut session = Session::new(node.clone(), kind.encoding, origin);
    let connected = Box::pin(session.handle_frame(&request)).await;
    let session = match settle(session, connected).await {
        Ok(session) => session,
        Err(refusal) => {
            let Refusal { replies, ended } = refusal;
            let replies = replies
                .iter()
                .filter(|_| kind.emulated)
                .filter_map(|f| kind.item(f));
            let body = match ended {
                // Not a connect request at all.
                Some(d) if d.code == Disconnect::bad_request().code => {
                    return (StatusCode::BAD_REQUEST, d.reason).into_response();
                }
                // Refused (a bad or expired token, say): said as the
                // stream's last push.
                Some(d) => replies.chain(kind.last(d)).collect::<Vec<Bytes>>().concat(),
                // Answered with an error the client acts on (an expired
                // token it refreshes, say), then ended.
                None => {
                    let replies: Vec<Bytes> = replies.collect();
                    if replies.is_empty() {
                        let why = "the first command must be a connect";
                        return (StatusCode::BAD_REQUEST, why).into_response();
                    }
                    replies.concat()
                }
            };
            return streamed(kind.style, Body::from(body));
        }
    };
    let (tx, mut rx) = mpsc::channel::<Bytes>(CHUNKS);
    node.tracker().clone().spawn(pump(node, session, tx, kind));
    let chunks = futures_util::stream::poll_fn(move |cx| {
        rx.poll_recv(cx).map(|chunk| chunk.map(Ok::<_, Infallible>))
    });
    let body = Body::from_stream(chunks);
    streamed(kind.style, body)
}

/// Whether a request's body is Protobuf (`Content-Type:
/// application/octet-stream`) rather than JSON.
pub(crate) fn binary(headers: &HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/octet-stream"))
}

/// What a refused connect leaves the client: the replies queued (a refused
/// connect's error reply) and the disconnect that ends it, if any.
pub(crate) struct Refusal {
    pub replies: Vec<Frame>,
    pub ended: Option<Disconnect>,
}

/// After the connect request: the session when it is connected; else it
/// is closed, with what the client is told.
pub(crate) async fn settle(
    session: Session,
    connected: Result<(), Disconnect>,
) -> Result<Session, Refusal> {
    if connected.is_ok() && session.user().is_some() {
        return Ok(session);
    }
    let mut queued = VecDeque::new();
    let _ = session.outbox().drain(&mut queued);
    let mut refusal = Refusal {
        replies: Vec::new(),
        ended: connected.err(),
    };
    for item in queued {
        match item {
            Item::Frame(frame) => refusal.replies.push(frame),
            Item::Control(control) => {
                if let Control::Disconnect(d) = *control {
                    refusal.ended.get_or_insert(d);
                }
            }
        }
    }
    Box::pin(session.close(refusal.ended.as_ref())).await;
    Err(refusal)
}

/// Where a streamed connection's messages go, and in what form: chunks of
/// an HTTP response, or the pushes of a gRPC stream.
pub(crate) trait Sink: Send + 'static {
    type Item: Send + 'static;
    /// A frame of the session as the client gets it (`None`: nothing).
    fn item(&self, frame: &Frame) -> Option<Self::Item>;
    /// The last message, saying why the server ended the connection.
    fn last(&self, d: Disconnect) -> Option<Self::Item>;
}

impl Sink for Kind {
    type Item = Bytes;

    fn item(&self, frame: &Frame) -> Option<Bytes> {
        Some(self.style.chunk(frame.as_bytes()))
    }

    fn last(&self, d: Disconnect) -> Option<Bytes> {
        let push = Push::Disconnect {
            reconnect: d.reconnect(),
            code: d.code,
            reason: d.reason,
        };
        self.encoding
            .push(&push)
            .and_then(|frame| self.item(&frame))
    }
}

fn streamed(style: Style, body: Body) -> Response {
    (
        [
            (header::CONTENT_TYPE, style.content_type()),
            (header::CACHE_CONTROL, "no-cache"),
            // Proxies that buffer responses (nginx) pass this one on as it
            // comes.
            (header::HeaderName::from_static("x-accel-buffering"), "no"),
        ],
        body,
    )
        .into_response()
}

/// Runs the session into the response until either ends; a session that
/// ends says why with a last `{"disconnect":…}` push. Frames are written as
/// WebSocket connections write them ([`Coalesce`]): a busy connection's
/// frames go out in pairs, which the HTTP stack then writes together; the
/// replies to posted commands go out at once.
pub(crate) async fn pump<S: Sink>(
    node: Arc<Node>,
    mut session: Session,
    tx: mpsc::Sender<S::Item>,
    sink: S,
) {
    let outbox = session.outbox().clone();
    let mut items = VecDeque::new();
    let mut coalesce = Coalesce::new(&node.config.client);
    // Queued frames wait until then (or for the next frame).
    let mut held: Option<Instant> = None;
    // Commands were handled (or the connect): their replies are not held.
    let mut urgent = true;
    let ended: Option<Disconnect> = 'run: loop {
        let deadline = session.next_deadline();
        let queued = std::future::poll_fn(|cx| {
            let queued = outbox.wakes(cx).queued;
            let due = match held {
                None => queued,
                Some(_) => queued && coalesce.hold_over(&outbox),
            };
            if due {
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
        let hold = async {
            match held {
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
                continue;
            }
            _ = hold => {}
            _ = queued => {
                let now = Instant::now();
                if held.is_none() && !std::mem::take(&mut urgent) {
                    held = coalesce.hold_for(now, &outbox);
                    if held.is_some() {
                        continue;
                    }
                }
            }
        }
        held = None;
        coalesce.wrote(Instant::now());
        if outbox.drain(&mut items) {
            Counters::incr(&node.counters.slow_disconnects);
            break Some(Disconnect::slow());
        }
        let mut handled = false;
        for item in items.drain(..) {
            match item {
                Item::Frame(frame) => {
                    Counters::incr(&node.counters.messages_out);
                    Counters::add(&node.counters.bytes_out, frame.len() as u64);
                    let Some(item) = sink.item(&frame) else {
                        continue;
                    };
                    if let Err(end) = send(&tx, item, &outbox, &node).await {
                        break 'run end;
                    }
                }
                Item::Control(control) => {
                    handled = true;
                    if let Err(d) = Box::pin(session.handle_control(*control)).await {
                        break 'run Some(d);
                    }
                }
            }
        }
        // Replies the commands queued go out at once.
        urgent = handled && outbox.queued_bytes() > 0;
    };
    if let Some(d) = &ended {
        // What is still queued (held frames, an error reply) goes before
        // the last push; not when the client is what failed.
        if d.code != Disconnect::slow().code && !outbox.drain(&mut items) {
            for item in items.drain(..) {
                if let Item::Frame(frame) = item {
                    if let Some(item) = sink.item(&frame) {
                        let _ = tx.try_send(item);
                    }
                }
            }
        }
    }
    if let Some(last) = ended.clone().and_then(|d| sink.last(d)) {
        let _ = tx.try_send(last);
    }
    Box::pin(session.close(ended.as_ref())).await;
}

/// Hands a message to the response. Most find room at once; for a client
/// that reads slowly it waits, but only until the connection's queue
/// overflows (3008), `websocket.write_timeout` passes or the node shuts
/// down — never for good. `Err(None)`: the client went away.
async fn send<T>(
    tx: &mpsc::Sender<T>,
    item: T,
    outbox: &Outbox,
    node: &Node,
) -> Result<(), Option<Disconnect>> {
    let item = match tx.try_send(item) {
        Ok(()) => return Ok(()),
        Err(mpsc::error::TrySendError::Closed(_)) => return Err(None),
        Err(mpsc::error::TrySendError::Full(item)) => item,
    };
    let limit = node.config.websocket.write_timeout.0;
    let slow = || {
        Counters::incr(&node.counters.slow_disconnects);
        Some(Disconnect::slow())
    };
    tokio::select! {
        sent = tx.send(item) => sent.map_err(|_| None),
        _ = outbox.overflowed() => Err(slow()),
        _ = tokio::time::sleep(limit) => Err(slow()),
        _ = node.shutdown().cancelled() => Err(Some(Disconnect::shutdown())),
    }
}
