//! The WebSocket transport: the upgrade (with origin check and buffer
//! sizes), then one task per connection with one `select!` over inbound
//! frames, the session's outbox, its timers and the node's shutdown.

use std::collections::VecDeque;
use std::sync::Arc;

use axum::extract::ws::{CloseFrame, Message, Utf8Bytes, WebSocket, WebSocketUpgrade};
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use bytes::{Bytes, BytesMut};
use herald_protocol::Disconnect;

use crate::node::{Counters, Node};
use crate::session::{Item, Session};

/// Default read buffer size when the config leaves it at 0. The buffer is
/// allocated and zero-filled for every connection, so it is most of what an
/// idle connection costs; client frames are small, and a larger message
/// only takes more reads.
const DEFAULT_READ_BUFFER: usize = 256;

/// Default write buffer size when the config leaves it at 0 (a threshold,
/// not an allocation: the buffer grows to the largest message written).
const DEFAULT_WRITE_BUFFER: usize = 4096;

/// Queued frames are joined into WebSocket messages of about this size at
/// most, so a backlog does not become one huge message that a slow link
/// cannot take within the write timeout.
const MAX_MESSAGE_BYTES: usize = 64 * 1024;

pub async fn upgrade(
    State(node): State<Arc<Node>>,
    headers: HeaderMap,
    ws: WebSocketUpgrade,
) -> Response {
    if !node.origins.allows(&headers) {
        tracing::info!(origin = ?headers.get("origin"), "connection from a disallowed origin refused");
        return (StatusCode::FORBIDDEN, "origin not allowed").into_response();
    }
    if node.shutdown.is_cancelled() {
        return (StatusCode::SERVICE_UNAVAILABLE, "shutting down").into_response();
    }
    let w = &node.config.websocket;
    let size = |n: usize, default: usize| if n == 0 { default } else { n };
    let write_buffer = size(w.write_buffer_size, DEFAULT_WRITE_BUFFER);
    ws.read_buffer_size(size(w.read_buffer_size, DEFAULT_READ_BUFFER))
        .write_buffer_size(write_buffer)
        .max_write_buffer_size(node.config.client.queue_max_size + write_buffer * 2)
        .max_message_size(w.message_size_limit)
        .max_frame_size(w.message_size_limit)
        .on_upgrade(move |socket| run(node, socket))
}

/// The connection's task. Not an `async fn`: its arguments would be stored
/// twice in the future (once as arguments, once as locals), and the
/// socket is a large part of what every connection costs.
#[allow(clippy::manual_async_fn)]
fn run(node: Arc<Node>, mut socket: WebSocket) -> impl std::future::Future<Output = ()> {
    async move {
        Counters::incr(&node.counters.connections_accepted);
        let tracker = node.tracker.clone();
        let _guard = tracker.token();
        let mut session = Session::new(node.clone());
        let disconnect = serve(&node, &mut session, &mut socket).await;
        if let Some(d) = &disconnect {
            tracing::debug!(client = %session.client_id(), code = d.code, reason = %d.reason, "closed");
        }
        // Boxed like command handling: leaving channels may talk to the
        // broker and the presence store, a large future needed once at the end.
        Box::pin(session.close()).await;
    }
}

/// Runs the connection until it ends; returns why the server ended it.
async fn serve(node: &Node, session: &mut Session, socket: &mut WebSocket) -> Option<Disconnect> {
    let outbox = session.outbox().clone();
    let write_timeout = node.config.websocket.write_timeout.0;
    let write_delay = node.config.client.write_delay.0;
    let mut items = VecDeque::new();
    let sleep = tokio::time::sleep_until(far_future());
    tokio::pin!(sleep);
    let result: Result<(), Disconnect> = loop {
        let deadline = session.next_deadline().unwrap_or_else(far_future);
        if sleep.deadline() != deadline {
            sleep.as_mut().reset(deadline);
        }
        tokio::select! {
            biased;
            _ = node.shutdown.cancelled() => break Err(Disconnect::shutdown()),
            _ = outbox.ready() => {
                if !write_delay.is_zero() {
                    // Let more messages join this write.
                    Box::pin(tokio::time::sleep(write_delay)).await;
                }
                // Boxed too: inline, the writer's state (~600 bytes) would
                // be part of every idle connection; this costs one small
                // allocation per flush, next to a system call.
                if let Err(d) = Box::pin(flush(session, socket, &mut items, write_timeout, node)).await {
                    break Err(d);
                }
            }
            msg = socket.recv() => match msg {
                // Command handling is boxed: its future is large and only
                // lives while a frame is handled, so idle connections do not
                // carry its space in their task.
                Some(Ok(Message::Text(text))) => {
                    if let Err(d) = Box::pin(session.handle_frame(text.as_bytes())).await { break Err(d) }
                }
                Some(Ok(Message::Binary(data))) => {
                    if let Err(d) = Box::pin(session.handle_frame(&data)).await { break Err(d) }
                }
                Some(Ok(Message::Ping(_) | Message::Pong(_))) => {}
                Some(Ok(Message::Close(_))) | None => return None,
                Some(Err(e)) => {
                    if is_too_big(&e) {
                        break Err(Disconnect::message_too_big());
                    }
                    tracing::debug!(client = %session.client_id(), error = %e, "read error");
                    return None;
                }
            },
            _ = &mut sleep => {
                if let Err(d) = Box::pin(session.on_deadline()).await { break Err(d) }
            }
        }
    };
    let d = result.err()?;
    // Deliver what is already queued (such as an error reply), then close;
    // not when writing is what failed.
    if d.code != Disconnect::slow().code && d.code != Disconnect::write_error().code {
        let _ = Box::pin(flush(session, socket, &mut items, write_timeout, node)).await;
    }
    let frame = CloseFrame {
        code: d.code,
        reason: Utf8Bytes::from(d.reason.as_str()),
    };
    let close = tokio::time::timeout(write_timeout, socket.send(Message::Close(Some(frame))));
    let _ = Box::pin(close).await;
    Some(d)
}

/// Writes everything queued as one text message (frames joined by newlines)
/// and acts on queued control requests in order.
async fn flush(
    session: &mut Session,
    socket: &mut WebSocket,
    items: &mut VecDeque<Item>,
    write_timeout: std::time::Duration,
    node: &Node,
) -> Result<(), Disconnect> {
    loop {
        if session.outbox().drain(items) {
            return Err(too_slow(session, node));
        }
        if items.is_empty() {
            return Ok(());
        }
        let mut batch: Option<Bytes> = None;
        let mut joined = BytesMut::new();
        for item in items.drain(..) {
            match item {
                Item::Frame(frame) => {
                    match batch.take() {
                        None if joined.is_empty() => batch = Some(frame),
                        first => {
                            if let Some(first) = first {
                                joined.extend_from_slice(&first);
                            }
                            joined.extend_from_slice(b"\n");
                            joined.extend_from_slice(&frame);
                        }
                    }
                    if joined.len() >= MAX_MESSAGE_BYTES {
                        let payload = take_batch(&mut batch, &mut joined);
                        send(session, socket, payload, write_timeout, node).await?;
                    }
                }
                Item::Control(c) => {
                    let payload = take_batch(&mut batch, &mut joined);
                    send(session, socket, payload, write_timeout, node).await?;
                    Box::pin(session.handle_control(*c)).await?;
                }
            }
        }
        let payload = take_batch(&mut batch, &mut joined);
        send(session, socket, payload, write_timeout, node).await?;
    }
}

/// Counts and logs a slow client; the disconnect to close it with.
fn too_slow(session: &Session, node: &Node) -> Disconnect {
    Counters::incr(&node.counters.slow_disconnects);
    tracing::info!(client = %session.client_id(), "client too slow, disconnecting");
    Disconnect::slow()
}

fn take_batch(batch: &mut Option<Bytes>, joined: &mut BytesMut) -> Option<Bytes> {
    batch
        .take()
        .or_else(|| (!joined.is_empty()).then(|| joined.split().freeze()))
}

/// Writes one message. A write blocked by a client that does not read is
/// cut short as soon as its queue overflows, so such a client is closed
/// with 3008 rather than waiting out the write timeout.
async fn send(
    session: &Session,
    socket: &mut WebSocket,
    payload: Option<Bytes>,
    timeout: std::time::Duration,
    node: &Node,
) -> Result<(), Disconnect> {
    let Some(payload) = payload else {
        return Ok(());
    };
    let text = Utf8Bytes::try_from(payload).map_err(|_| {
        // Every payload is validated as UTF-8 JSON on the way in.
        tracing::error!(client = %session.client_id(), "outgoing frame is not UTF-8");
        Disconnect::internal()
    })?;
    let write = socket.send(Message::Text(text));
    tokio::pin!(write);
    // Most writes complete at once (the socket has room): those need no
    // timer and no overflow watch.
    if let std::task::Poll::Ready(written) = futures_util::poll!(write.as_mut()) {
        return written.map_err(|_| Disconnect::write_error());
    }
    // The rest (a timer and the overflow watch) is boxed so that it takes
    // no room in the connection's task while the connection is idle.
    Box::pin(async move {
        tokio::select! {
            written = tokio::time::timeout(timeout, write) => match written {
                Ok(Ok(())) => Ok(()),
                _ => Err(Disconnect::write_error()),
            },
            _ = session.outbox().overflowed() => Err(too_slow(session, node)),
        }
    })
    .await
}

fn is_too_big(e: &axum::Error) -> bool {
    let text = e.to_string();
    text.contains("Message too long")
        || text.contains("Message length too long")
        || text.contains("too long")
}

fn far_future() -> tokio::time::Instant {
    tokio::time::Instant::now() + std::time::Duration::from_secs(86_400 * 365)
}
