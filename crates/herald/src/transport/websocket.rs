//! The WebSocket transport: the upgrade (after `admission.rs` lets the
//! client in; buffer sizes, compression), then one task per connection waiting on the session's outbox,
//! inbound frames, its timer and the node's shutdown (`wake.rs`).

use std::collections::VecDeque;
use std::sync::Arc;

use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::Response;
use futures_util::SinkExt;
use herald_protocol::Disconnect;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, WebSocketConfig};
use tokio_tungstenite::tungstenite::{self, Message, Utf8Bytes};

use super::admission::refusal;
use super::deflate::{self, Refused};
use super::upgrade::{Socket, Upgrade};
use super::wake::{bounded_write, far_future, Coalesce, Wake, Wakes, Written};

use crate::frame::{Encoding, Frame};
use crate::metrics::Counters;
use crate::node::Node;
use crate::session::{Item, Peer, Session};

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

pub async fn upgrade(State(node): State<Arc<Node>>, headers: HeaderMap, ws: Upgrade) -> Response {
    let encoding = ws.encoding();
    let limit = node.config.websocket.message_size_limit;
    let compression = websocket_compression(&node);
    accept(node, headers, ws, encoding, limit, compression)
}

/// `uni_websocket`: the client's first message is its connect request;
/// then the server only pushes, one bare push per message.
pub async fn upgrade_uni(
    State(node): State<Arc<Node>>,
    headers: HeaderMap,
    ws: Upgrade,
) -> Response {
    let w = &node.config.uni_websocket;
    let limit = w.message_size_limit;
    let compression = compression(
        w.compression,
        w.compression_level,
        w.compression_min_size,
        limit,
    );
    accept(node, headers, ws, Encoding::UniJson, limit, compression)
}

/// `websocket.compression*`, which Pusher sockets follow too.
pub(crate) fn websocket_compression(node: &Node) -> Option<deflate::Settings> {
    let w = &node.config.websocket;
    compression(
        w.compression,
        w.compression_level,
        w.compression_min_size,
        w.message_size_limit,
    )
}

/// An endpoint's permessage-deflate settings, when it compresses
/// (`compression`, `compression_level`, `compression_min_size`); `limit`
/// bounds a message after inflating.
fn compression(
    enabled: bool,
    level: i32,
    min_size: usize,
    limit: usize,
) -> Option<deflate::Settings> {
    enabled.then(|| deflate::Settings {
        // -1: zlib's default.
        level: u32::try_from(level).unwrap_or(6),
        min_size,
        read_limit: limit,
    })
}

/// Lets a connection in (rates, origin, shutdown) and upgrades it.
fn accept(
    node: Arc<Node>,
    headers: HeaderMap,
    ws: Upgrade,
    encoding: Encoding,
    message_size_limit: usize,
    compression: Option<deflate::Settings>,
) -> Response {
    if let Some(refused) = refusal(&node, &headers, ws.peer()) {
        return refused;
    }
    let config = socket_config(&node, message_size_limit);
    let transport = match encoding {
        Encoding::UniJson => "uni_websocket",
        Encoding::Json | Encoding::Protobuf | Encoding::UniProtobuf => "websocket",
    };
    let peer = Peer::new(&node, transport, &headers);
    ws.accept(config, compression, move |socket| {
        run(node, socket, encoding, peer)
    })
}

/// A server socket's settings: small read and write buffers (an idle
/// connection's memory is mostly these), the write buffer bounded by the
/// client's queue, messages up to `message_size_limit`. Every WebSocket
/// endpoint uses them.
pub(crate) fn socket_config(node: &Node, message_size_limit: usize) -> WebSocketConfig {
    let w = &node.config.websocket;
    let size = |n: usize, default: usize| if n == 0 { default } else { n };
    let write_buffer = size(w.write_buffer_size, DEFAULT_WRITE_BUFFER);
    WebSocketConfig::default()
        .read_buffer_size(size(w.read_buffer_size, DEFAULT_READ_BUFFER))
        .write_buffer_size(write_buffer)
        .max_write_buffer_size(node.config.client.queue_max_size + write_buffer * 2)
        .max_message_size(Some(message_size_limit))
        .max_frame_size(Some(message_size_limit))
}

/// The connection's task. Not an `async fn`: its arguments would be stored
/// twice in the future (once as arguments, once as locals), and the
/// socket is a large part of what every connection costs.
#[allow(clippy::manual_async_fn)]
fn run(
    node: Arc<Node>,
    mut socket: Socket,
    encoding: Encoding,
    peer: Peer,
) -> impl std::future::Future<Output = ()> {
    // Made before the task starts, so that the future holds the session
    // and not also the dead slots of what it was made from.
    let mut session = Session::new(node.clone(), encoding, peer);
    async move {
        Counters::incr(&node.counters.connections_accepted);
        let _guard = node.tracker().token();
        let closed = serve(&node, &mut session, &mut socket).await;
        if let Some(d) = &closed {
            tracing::debug!(client = %session.client_id(), code = d.code, reason = %d.reason, "closed");
        }
        // Boxed like command handling: leaving channels may talk to the
        // broker and the presence store, a large future needed once at the end.
        Box::pin(session.close(closed.as_ref())).await;
        if closed.is_some() {
            // The session is gone; the socket waits for the client's end.
            Box::pin(linger(&mut socket, node.config.websocket.write_timeout.0)).await;
        }
    }
}

/// Runs the connection until it ends; returns why the server ended it,
/// when it sent the client a Close frame saying so.
async fn serve(node: &Node, session: &mut Session, socket: &mut Socket) -> Option<Disconnect> {
    let outbox = session.outbox().clone();
    let write_timeout = node.config.websocket.write_timeout.0;
    let mut items = VecDeque::new();
    // One instant for "no deadline", so that the timer is reset only when
    // the session's deadline really changes.
    let never = far_future();
    let sleep = tokio::time::sleep_until(never);
    tokio::pin!(sleep);
    let shutdown = node.shutdown().cancelled();
    tokio::pin!(shutdown);
    let mut wakes = Wakes::new(outbox, sleep, shutdown, Coalesce::new(&node.config.client));
    let result: Result<(), Disconnect> = loop {
        let deadline = session.next_deadline().unwrap_or(never);
        match wakes.next(socket, deadline).await {
            Wake::Shutdown => break Err(Disconnect::shutdown()),
            Wake::Outbox => {
                let flushed = flush(session, socket, &mut items, write_timeout, node);
                if let Err(d) = Box::pin(flushed).await {
                    break Err(d);
                }
            }
            // Command handling is boxed: its future is large and only lives
            // while a frame is handled, so idle connections do not carry its
            // space in their task.
            Wake::Inbound(Some(Ok(Message::Text(text)))) => {
                count_in(node, text.len());
                if let Err(d) = Box::pin(session.handle_frame(text.as_bytes())).await {
                    break Err(d);
                }
                wakes.urgent();
            }
            Wake::Inbound(Some(Ok(Message::Binary(data)))) => {
                count_in(node, data.len());
                if let Err(d) = Box::pin(session.handle_frame(&data)).await {
                    break Err(d);
                }
                wakes.urgent();
            }
            Wake::Inbound(Some(Ok(Message::Ping(_) | Message::Pong(_) | Message::Frame(_)))) => {}
            Wake::Inbound(Some(Ok(Message::Close(_)))) => {
                // The WebSocket queued the close reply (RFC 6455 §5.5.1):
                // send it before the connection is dropped.
                let reply = tokio::time::timeout(write_timeout, socket.flush());
                let _ = Box::pin(reply).await;
                return None;
            }
            Wake::Inbound(None) => return None,
            Wake::Inbound(Some(Err(e))) => match read_failure(&e) {
                Some(d) => break Err(d),
                None => {
                    tracing::debug!(client = %session.client_id(), error = %e, "read error");
                    return None;
                }
            },
            Wake::Deadline => {
                if let Err(d) = Box::pin(session.on_deadline()).await {
                    break Err(d);
                }
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
        code: CloseCode::from(d.code),
        reason: Utf8Bytes::from(d.reason.as_str()),
    };
    let close = tokio::time::timeout(write_timeout, socket.send(Message::Close(Some(frame))));
    match Box::pin(close).await {
        Ok(Ok(())) => Some(d),
        _ => None,
    }
}

/// After the server's Close frame: ends the sending half (the client sees
/// the end of the stream after the Close frame) and reads, and drops, what
/// the client still sends until it closes too, for at most `limit`.
/// Closing with unread data would reset the connection, and the client
/// could lose the Close frame and its reason (a message over the size limit
/// leaves the rest of it unread).
async fn linger(socket: &mut Socket, limit: std::time::Duration) {
    let io = socket.get_mut();
    let drain = async {
        io.shutdown().await?;
        let mut buf = vec![0u8; 8192];
        while io.read(&mut buf).await? > 0 {}
        Ok::<(), std::io::Error>(())
    };
    let _ = tokio::time::timeout(limit, drain).await;
}

/// The close a failed read calls for: 1009 for a message over
/// `websocket.message_size_limit` (compressed ones counted inflated), 1007
/// for a text message that is not UTF-8 or compressed data that is not
/// DEFLATE, 1002 for a frame the protocol forbids (also inside a
/// compressed message); `None` when the
/// connection itself failed (nothing can be sent).
pub(crate) fn read_failure(e: &tungstenite::Error) -> Option<Disconnect> {
    use tungstenite::error::{CapacityError, Error};
    match e {
        Error::Capacity(CapacityError::MessageTooLong { .. }) => {
            Some(Disconnect::message_too_big())
        }
        Error::Utf8(_) => Some(Disconnect::invalid_payload()),
        Error::Protocol(_) => Some(Disconnect::websocket_protocol_error()),
        Error::Io(e) => match Refused::of(e)? {
            Refused::TooBig => Some(Disconnect::message_too_big()),
            Refused::Corrupt => Some(Disconnect::invalid_payload()),
            Refused::Protocol => Some(Disconnect::websocket_protocol_error()),
        },
        _ => None,
    }
}

/// Writes everything queued, frames joined by newlines into messages of up
/// to [`MAX_MESSAGE_BYTES`], and acts on queued control requests in order.
/// Little lives across its awaits (the batching is [`next_step`]'s), so the
/// writer adds little to a connection's task.
async fn flush(
    session: &mut Session,
    socket: &mut Socket,
    items: &mut VecDeque<Item>,
    write_timeout: std::time::Duration,
    node: &Node,
) -> Result<(), Disconnect> {
    loop {
        if session.outbox().drain(items) {
            return Err(too_slow(session, node));
        }
        if items.is_empty() {
            // The queue now holds the buffer the last batch came in; a second
            // one (from frames queued while that batch was written) is freed,
            // so an idle connection keeps a single buffer.
            *items = VecDeque::new();
            return Ok(());
        }
        while let Some(step) = next_step(items) {
            match step {
                Step::Write(payload) => {
                    Counters::incr(&node.counters.messages_out);
                    Counters::add(&node.counters.bytes_out, payload.as_bytes().len() as u64);
                    let message = match payload {
                        Frame::Text(text) | Frame::Whole(text) => Message::Text(text),
                        Frame::Binary(bytes) => Message::Binary(bytes),
                    };
                    // A write blocked by a client that does not read is cut
                    // short as soon as its queue overflows, so such a client
                    // is closed with 3008 rather than waiting out the write
                    // timeout.
                    let outbox = session.outbox();
                    match bounded_write(socket.send(message), outbox, write_timeout).await {
                        Written::Done => {}
                        Written::Failed => return Err(Disconnect::write_error()),
                        Written::Overflowed => return Err(too_slow(session, node)),
                    }
                }
                Step::Control(c) => Box::pin(session.handle_control(*c)).await?,
            }
        }
    }
}

/// A message the client sent, counted for `/metrics`.
fn count_in(node: &Node, len: usize) {
    Counters::incr(&node.counters.messages_in);
    Counters::add(&node.counters.bytes_in, len as u64);
}

enum Step {
    Write(Frame),
    Control(Box<crate::hub::Control>),
}

/// The next thing to do with the drained items: write the frames up to the
/// next control (or the size cap) as one message, or act on the control.
/// JSON frames join with a newline between them; Protobuf frames, each
/// length-prefixed already, join as they are.
fn next_step(items: &mut VecDeque<Item>) -> Option<Step> {
    let first = match items.pop_front()? {
        Item::Control(c) => return Some(Step::Control(c)),
        Item::Frame(frame) => frame,
    };
    let separator = match first {
        Frame::Text(_) => 1,
        Frame::Binary(_) => 0,
        Frame::Whole(_) => return Some(Step::Write(first)),
    };
    let same_kind = |f: &Frame| {
        matches!(
            (&first, f),
            (Frame::Text(_), Frame::Text(_)) | (Frame::Binary(_), Frame::Binary(_))
        )
    };
    // The frames that join it (added while the message is below the cap),
    // and the joined size, to allocate once.
    let (mut count, mut size) = (0, first.len());
    for item in items.iter() {
        match item {
            Item::Frame(f) if size < MAX_MESSAGE_BYTES && same_kind(f) => {
                (count, size) = (count + 1, size + separator + f.len())
            }
            _ => break,
        }
    }
    if count == 0 {
        return Some(Step::Write(first)); // the common case: one frame
    }
    let rest = items.drain(..count).filter_map(|item| match item {
        Item::Frame(frame) => Some(frame),
        Item::Control(_) => None,
    });
    let joined = match first {
        // Text frames joined with newlines are still UTF-8: no check.
        Frame::Text(first) => {
            let mut joined = String::with_capacity(size);
            joined.push_str(&first);
            for frame in rest {
                joined.push('\n');
                joined.push_str(frame.as_text().unwrap_or_default());
            }
            Frame::Text(joined.into())
        }
        Frame::Whole(_) => first,
        Frame::Binary(first) => {
            let mut joined = Vec::with_capacity(size);
            joined.extend_from_slice(&first);
            for frame in rest {
                joined.extend_from_slice(frame.as_bytes());
            }
            Frame::Binary(joined.into())
        }
    };
    Some(Step::Write(joined))
}

/// Counts and logs a slow client; the disconnect to close it with.
fn too_slow(session: &Session, node: &Node) -> Disconnect {
    Counters::incr(&node.counters.slow_disconnects);
    tracing::info!(client = %session.client_id(), "client too slow, disconnecting");
    Disconnect::slow()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hub::Control;
    use bytes::Bytes;

    fn frame(text: &str) -> Item {
        Item::Frame(Frame::Text(text.into()))
    }

    fn write(step: Option<Step>) -> String {
        match step {
            Some(Step::Write(Frame::Text(t))) => t.to_string(),
            _ => panic!("expected a text write"),
        }
    }

    #[test]
    fn frames_join_until_a_control() {
        let mut items: VecDeque<Item> = [frame("a"), frame("b"), frame("c")].into();
        items.push_back(Item::Control(Box::new(Control::Message(Bytes::new()))));
        items.push_back(frame("d"));
        assert_eq!(write(next_step(&mut items)), "a\nb\nc");
        assert!(matches!(next_step(&mut items), Some(Step::Control(_))));
        assert_eq!(write(next_step(&mut items)), "d");
        assert!(next_step(&mut items).is_none());
    }

    #[test]
    fn messages_stop_growing_at_the_cap() {
        let big = "x".repeat(MAX_MESSAGE_BYTES / 2);
        let mut items: VecDeque<Item> = [frame(&big), frame(&big), frame("y"), frame("z")].into();
        let first = write(next_step(&mut items));
        assert_eq!(
            first.len(),
            MAX_MESSAGE_BYTES + 1,
            "two halves and their newline"
        );
        assert_eq!(write(next_step(&mut items)), "y\nz");
        let mut items: VecDeque<Item> = [frame(&"x".repeat(MAX_MESSAGE_BYTES)), frame("y")].into();
        assert_eq!(write(next_step(&mut items)).len(), MAX_MESSAGE_BYTES);
        assert_eq!(write(next_step(&mut items)), "y");
    }

    #[test]
    fn binary_frames_join_without_a_separator() {
        let bin = |b: &'static [u8]| Item::Frame(Frame::Binary(Bytes::from_static(b)));
        let mut items: VecDeque<Item> = [bin(b"\x01a"), bin(b"\x01b"), bin(b"\x00")].into();
        match next_step(&mut items) {
            Some(Step::Write(Frame::Binary(b))) => assert_eq!(&b[..], b"\x01a\x01b\x00"),
            _ => panic!("expected a binary write"),
        }
        assert!(next_step(&mut items).is_none());
    }
}
