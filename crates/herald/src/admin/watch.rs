//! A live view of one channel for the UI: a [`Watcher`] subscribed in the
//! hub like a connection (but not counted as one) streams the channel's
//! publications and join/leave events as Server-Sent Events, each event the
//! unidirectional transports' JSON push. The subscription ends when the
//! response does.

use std::convert::Infallible;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::Extension;
use futures_util::StreamExt;
use herald_protocol::{PresenceEvent, Publication};
use parking_lot::Mutex;
use tokio::sync::mpsc;

use super::{error, Gate, WatchQuery};
use crate::frame::{Encoding, Frame};
use crate::hub::{Client, Control};
use crate::node::Node;

struct Watcher {
    key: u64,
    id: Arc<str>,
    /// Taken (closing the stream) when the view ends.
    tx: Mutex<Option<mpsc::UnboundedSender<String>>>,
    /// Bytes queued for the page; over `limit` (`client.queue_max_size`,
    /// as for a connection) the view ends.
    queued: AtomicUsize,
    limit: usize,
}

impl Watcher {
    fn send(&self, frame: Option<Frame>) {
        let Some(text) = frame.as_ref().and_then(Frame::as_text) else {
            return;
        };
        let mut tx = self.tx.lock();
        if self.queued.fetch_add(text.len(), Ordering::Relaxed) + text.len() > self.limit {
            self.end_locked(&mut tx, "the page fell behind");
            return;
        }
        if tx
            .as_ref()
            .is_some_and(|t| t.send(text.to_string()).is_err())
        {
            tx.take();
        }
    }

    fn end_locked(&self, tx: &mut Option<mpsc::UnboundedSender<String>>, why: &str) {
        if let Some(t) = tx.take() {
            let _ = t.send(serde_json::json!({ "end": why }).to_string());
        }
    }
}

impl Client for Watcher {
    fn key(&self) -> u64 {
        self.key
    }
    fn client_id(&self) -> &str {
        &self.id
    }
    fn user(&self) -> &str {
        ""
    }
    fn transport(&self) -> &'static str {
        "admin"
    }
    fn deliver(&self, publication: &Arc<Publication>) {
        self.send(Encoding::UniJson.publication(publication));
    }
    fn deliver_presence(&self, event: &Arc<PresenceEvent>) {
        self.send(Encoding::UniJson.presence(event));
    }
    fn control(&self, control: Control) {
        // Told to recover (its channel's delivery broke off): the page
        // opens the view again.
        if let Control::Unsubscribe { reason, .. } = control {
            self.end_locked(&mut self.tx.lock(), &reason);
        }
    }
}

/// Leaves the hub (and, for the channel's last local subscriber, the
/// broker) when the response is dropped.
struct Leave {
    node: Arc<Node>,
    channel: String,
    key: u64,
}

impl Drop for Leave {
    fn drop(&mut self) {
        if self.node.hub.unsubscribe(&self.channel, self.key) {
            let (node, channel) = (self.node.clone(), std::mem::take(&mut self.channel));
            tokio::spawn(async move { node.broker_sync(&channel).await });
        }
    }
}

pub(super) async fn watch(
    State(node): State<Arc<Node>>,
    Extension(gate): Extension<Arc<Gate>>,
    headers: HeaderMap,
    query: Result<WatchQuery, axum::extract::rejection::QueryRejection>,
) -> Response {
    if !gate.admits(&headers) {
        return error(StatusCode::UNAUTHORIZED, "log in first");
    }
    let Ok(query) = query else {
        return error(StatusCode::BAD_REQUEST, "name the channel: ?channel=…");
    };
    let channel = query.0.channel;
    if channel.is_empty() || channel.len() > node.config.channel.max_length {
        return error(
            StatusCode::BAD_REQUEST,
            "a channel name, at most channel.max_length bytes",
        );
    }
    let (tx, mut rx) = mpsc::unbounded_channel();
    let watcher = Arc::new(Watcher {
        key: node.next_key(),
        id: Arc::from(uuid::Uuid::new_v4().to_string()),
        tx: Mutex::new(Some(tx)),
        queued: AtomicUsize::new(0),
        limit: node.config.client.queue_max_size,
    });
    let key = watcher.key;
    let first = node.hub.subscribe(&channel, watcher.clone(), true);
    // Made before the await below, so that a client gone during it still
    // leaves the hub.
    let leave = Leave {
        node: node.clone(),
        channel,
        key,
    };
    if first {
        node.broker_sync(&leave.channel).await;
    }
    let events = futures_util::stream::poll_fn(move |cx| {
        let _held = &leave;
        rx.poll_recv(cx).map(|o| {
            o.map(|text| {
                watcher.queued.fetch_sub(text.len(), Ordering::Relaxed);
                Ok::<_, Infallible>(Event::default().data(text))
            })
        })
    })
    // The view ends with the server, not after it.
    .take_until(node.shutdown().clone().cancelled_owned());
    Sse::new(events)
        .keep_alive(KeepAlive::default())
        .into_response()
}
