//! A live view of one channel for the UI: a [`Watcher`] subscribed in the
//! hub like a connection (but not counted as one) streams the channel's
//! publications and join/leave events as Server-Sent Events, each event the
//! unidirectional transports' JSON push. The subscription ends when the
//! response does.

use std::convert::Infallible;
use std::sync::Arc;

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::Extension;
use herald_protocol::{PresenceEvent, Publication};
use parking_lot::Mutex;
use tokio::sync::mpsc;

use super::{error, Gate, WatchQuery};
use crate::frame::{Encoding, Frame};
use crate::hub::{Client, Control};
use crate::node::Node;

/// Events a slow page may fall behind by before its view ends.
const QUEUE: usize = 512;

struct Watcher {
    key: u64,
    id: Arc<str>,
    /// Taken (closing the stream) when the view ends.
    tx: Mutex<Option<mpsc::Sender<String>>>,
}

impl Watcher {
    fn send(&self, frame: Option<Frame>) {
        let Some(text) = frame.as_ref().and_then(Frame::as_text) else {
            return;
        };
        let mut tx = self.tx.lock();
        let full = tx
            .as_ref()
            .is_some_and(|t| t.try_send(text.to_string()).is_err());
        if full {
            self.end_locked(&mut tx, "the page fell behind");
        }
    }

    fn end_locked(&self, tx: &mut Option<mpsc::Sender<String>>, why: &str) {
        if let Some(t) = tx.take() {
            // A full queue keeps its events; the end then goes unsaid.
            let _ = t.try_send(serde_json::json!({ "end": why }).to_string());
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
    let (tx, mut rx) = mpsc::channel(QUEUE);
    let watcher = Arc::new(Watcher {
        key: node.next_key(),
        id: Arc::from(uuid::Uuid::new_v4().to_string()),
        tx: Mutex::new(Some(tx)),
    });
    let key = watcher.key;
    if node.hub.subscribe(&channel, watcher, true) {
        node.broker_sync(&channel).await;
    }
    let leave = Leave {
        node: node.clone(),
        channel,
        key,
    };
    let events = futures_util::stream::poll_fn(move |cx| {
        let _held = &leave;
        rx.poll_recv(cx)
            .map(|o| o.map(|text| Ok::<_, Infallible>(Event::default().data(text))))
    });
    Sse::new(events)
        .keep_alive(KeepAlive::default())
        .into_response()
}
