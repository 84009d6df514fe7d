//! A Pusher socket's loop: what wakes it (the shared wake-ups), pings
//! after `activity_timeout` and the pong timeout, client messages, and the
//! writes of what its outbox holds.

use std::collections::VecDeque;
use std::ops::ControlFlow;
use std::time::Duration;

use futures_util::SinkExt;
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::Message;

use super::{code, Close, Link};
use crate::frame::Frame;
use crate::metrics::Counters;
use crate::node::Node;
use crate::session::{Item, Outbox};
use crate::transport::upgrade::Socket;
use crate::transport::wake::{bounded_write, far_future, Coalesce, Wake, Wakes, Written};
use crate::transport::websocket;

/// How long a socket that was sent `pusher:ping` has to answer, at most
/// (never longer than the app's `activity_timeout`).
const PONG_TIMEOUT: Duration = Duration::from_secs(30);

impl Link {
    /// Runs until the socket ends; the close to send, if the server ends it.
    pub(super) async fn serve(&mut self, socket: &mut Socket) -> Option<Close> {
        let outbox = self.conn.outbox.clone();
        let mut items = VecDeque::new();
        let activity = self.app.cfg.activity_timeout.0;
        let pong_timeout = PONG_TIMEOUT.min(activity);
        let sleep = tokio::time::sleep_until(far_future());
        tokio::pin!(sleep);
        let node = self.node.clone();
        let shutdown = node.shutdown().cancelled();
        tokio::pin!(shutdown);
        let coalesce = Coalesce::new(&node.config.client);
        let mut wakes = Wakes::new(outbox.clone(), sleep, shutdown, coalesce);
        let write_timeout = node.config.websocket.write_timeout.0;
        let mut heard = Instant::now();
        let mut pinged: Option<Instant> = None;
        // The timer is armed for `heard + activity` as it was when armed: a
        // message since only moves it on when it fires, so messages do not
        // reset the timer each.
        let mut deadline = heard + activity;
        loop {
            match wakes.next(socket, deadline).await {
                Wake::Shutdown => {
                    return Some(Close::new(
                        code::RECONNECT,
                        "Server shutting down: reconnect",
                    ))
                }
                Wake::Deadline if pinged.is_some() => {
                    return Some(Close::new(
                        code::PONG_TIMEOUT,
                        "Pong reply not received in time",
                    ))
                }
                Wake::Deadline if heard + activity > Instant::now() => {
                    deadline = heard + activity;
                }
                Wake::Deadline => {
                    let now = Instant::now();
                    pinged = Some(now);
                    deadline = now + pong_timeout;
                    self.push("pusher:ping", None, "{}");
                }
                Wake::Inbound(None) => return None,
                // An oversized, broken or undecodable message: the
                // WebSocket close code that says so.
                Wake::Inbound(Some(Err(e))) => {
                    return websocket::read_failure(&e).map(|d| Close::new(d.code, d.reason));
                }
                Wake::Inbound(Some(Ok(m))) => {
                    heard = Instant::now();
                    if pinged.take().is_some() {
                        deadline = heard + activity;
                    }
                    // Boxed, as are leaving a channel and the refusals:
                    // the message and what handling it awaits live only
                    // while it runs, not in every idle socket's task.
                    if let ControlFlow::Break(end) = Box::pin(self.inbound(m)).await {
                        return end;
                    }
                }
                Wake::Outbox => {}
            }
            // Boxed like the WebSocket's flush: it lives only while it
            // writes, not in every idle socket's task.
            let written = self.write_out(socket, &mut items, &outbox, write_timeout);
            if let Err(end) = Box::pin(written).await {
                return end;
            }
        }
    }

    /// Acts on a message from the client; `Break` ends the socket (with
    /// the close to send, if any).
    async fn inbound(&mut self, m: Message) -> ControlFlow<Option<Close>> {
        match m {
            Message::Text(text) => {
                Counters::incr(&self.node.counters.messages_in);
                Counters::add(&self.node.counters.bytes_in, text.len() as u64);
                if let Err(close) = self.handle(text.as_str()).await {
                    return ControlFlow::Break(Some(close));
                }
            }
            Message::Binary(_) => self.error(None, "Messages are JSON text"),
            Message::Close(_) => return ControlFlow::Break(None),
            _ => {}
        }
        ControlFlow::Continue(())
    }

    /// Writes what is queued: messages are fed, then flushed together (one
    /// write for all); controls are acted on in order.
    async fn write_out(
        &mut self,
        socket: &mut Socket,
        items: &mut VecDeque<Item>,
        outbox: &Outbox,
        write_timeout: Duration,
    ) -> Result<(), Option<Close>> {
        if outbox.drain(items) {
            return Err(too_slow(&self.node));
        }
        while let Some(item) = items.pop_front() {
            match item {
                Item::Frame(frame) => {
                    Counters::incr(&self.node.counters.messages_out);
                    Counters::add(&self.node.counters.bytes_out, frame.len() as u64);
                    let (Frame::Text(text) | Frame::Whole(text)) = frame else {
                        continue;
                    };
                    let fed = socket.feed(Message::Text(text));
                    written(bounded_write(fed, outbox, write_timeout).await, &self.node)?;
                }
                Item::Control(control) => {
                    if let Some(close) = self.control(*control).await {
                        return Err(Some(close));
                    }
                }
            }
        }
        written(
            bounded_write(socket.flush(), outbox, write_timeout).await,
            &self.node,
        )
    }
}

/// Ends the socket when a write did not complete: silently when it
/// failed, with 4100 when the client is too slow.
fn written(w: Written, node: &Node) -> Result<(), Option<Close>> {
    match w {
        Written::Done => Ok(()),
        Written::Failed => Err(None),
        Written::Overflowed => Err(too_slow(node)),
    }
}

fn too_slow(node: &Node) -> Option<Close> {
    Counters::incr(&node.counters.slow_disconnects);
    Some(Close::new(
        code::OVER_CAPACITY,
        "Too slow: messages queued up",
    ))
}
