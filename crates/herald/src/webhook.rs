//! Durable webhooks (`webhooks`): connection, subscription and presence
//! events, written to storage before they are sent, then POSTed to each
//! webhook that wants them — signed, retried with growing delays, kept as
//! dead letters after the last attempt — at least once, across restarts.
//!
//! Sessions hand events to a bounded queue (a full one makes them wait,
//! never fan-out); one writer task records them in batches, one
//! transaction each; a delivery task claims due events, sends them with
//! bounded concurrency and records how each attempt ended. "User online"
//! and "channel occupied" are decided in storage, where every node of a
//! cluster records which keys it holds: the first holder anywhere makes
//! the event, the last one gone its opposite. A node that vanishes without
//! a goodbye is released by the others after [`NODE_TIMEOUT`].

mod deliver;

use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use serde_json::{json, Map, Value};
use tokio::sync::{mpsc, Notify};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::config::webhook::Webhook;
use crate::metrics::Counters;
use crate::store::event_queue::{Change, EventQueue, HolderKind, NewEvent};

/// Events waiting for the writer; more make sessions wait.
const QUEUE: usize = 8192;
/// Most changes recorded in one transaction.
const BATCH: usize = 512;
/// How often a node says it is alive.
const HEARTBEAT_EVERY: Duration = Duration::from_secs(10);
/// A node unseen this long is gone: its users and channels are released.
pub const NODE_TIMEOUT: Duration = Duration::from_secs(60);

/// Which events some webhook wants.
#[derive(Debug, Default, Clone, Copy)]
struct Wants {
    connect: bool,
    disconnect: bool,
    subscribe: bool,
    unsubscribe: bool,
    /// user_online or user_offline: who holds each user is tracked.
    users: bool,
    /// channel_occupied or channel_vacated.
    channels: bool,
}

pub struct Webhooks {
    hooks: Arc<Vec<Webhook>>,
    wants: Wants,
    /// This node's name (in event bodies) and uid (its holder rows).
    node: String,
    uid: String,
    queue: mpsc::Sender<Change>,
    store: Arc<dyn EventQueue>,
    stop: CancellationToken,
    tasks: Mutex<Vec<JoinHandle<()>>>,
}

impl Webhooks {
    /// Says the node is alive, then starts the writer, delivery and
    /// heartbeat tasks.
    pub async fn open(
        hooks: Vec<Webhook>,
        store: Arc<dyn EventQueue>,
        node: &str,
        uid: &str,
        counters: Arc<Counters>,
    ) -> Result<Arc<Self>, crate::store::StoreError> {
        store.heartbeat(uid, now_ms()).await?;
        store.recover().await?;
        let any = |events: &[&str]| hooks.iter().any(|h| events.iter().any(|e| h.wants(e)));
        let wants = Wants {
            connect: any(&["connect"]),
            disconnect: any(&["disconnect"]),
            subscribe: any(&["subscribe"]),
            unsubscribe: any(&["unsubscribe"]),
            users: any(&["user_online", "user_offline"]),
            channels: any(&["channel_occupied", "channel_vacated"]),
        };
        let hooks = Arc::new(hooks);
        let (queue, changes) = mpsc::channel(QUEUE);
        let stop = CancellationToken::new();
        let recorded = Arc::new(Notify::new());
        let this = Arc::new(Self {
            hooks: hooks.clone(),
            wants,
            node: node.to_string(),
            uid: uid.to_string(),
            queue,
            store: store.clone(),
            stop: stop.clone(),
            tasks: Mutex::new(Vec::new()),
        });
        let writer = tokio::spawn(write(
            store.clone(),
            uid.to_string(),
            changes,
            recorded.clone(),
            counters.clone(),
            stop.clone(),
        ));
        let delivery = deliver::Delivery::new(hooks, store.clone(), uid, counters);
        let deliverer = tokio::spawn(delivery.run(recorded, stop.clone()));
        let heartbeat = tokio::spawn(heartbeat(this.clone(), stop.clone()));
        this.tasks.lock().extend([writer, deliverer, heartbeat]);
        Ok(this)
    }

    /// The rows of `event` for every webhook that wants it.
    fn events(&self, event: &str, node: &str, fields: Value) -> Vec<NewEvent> {
        let fields = match fields {
            Value::Object(map) => map,
            _ => Map::new(),
        };
        let time_ms = now_ms();
        self.hooks
            .iter()
            .filter(|h| h.wants(event))
            .map(|h| {
                let id = uuid::Uuid::new_v4().to_string();
                let mut body = Map::new();
                body.insert("id".into(), json!(id));
                body.insert("event".into(), json!(event));
                body.insert("time_ms".into(), json!(time_ms));
                body.insert("node".into(), json!(node));
                body.extend(fields.clone());
                NewEvent {
                    id,
                    hook: h.name.clone(),
                    event: event.to_string(),
                    body: Value::Object(body).to_string(),
                }
            })
            .collect()
    }

    async fn send(&self, change: Change) {
        if self.queue.send(change).await.is_err() {
            tracing::warn!("webhook event after shutdown dropped");
        }
    }

    /// A connection was made; `first` when it is the user's first on this
    /// node.
    pub async fn connected(&self, client: &str, user: &str, first: bool) {
        let fields = json!({"client": client, "user": user});
        if self.wants.connect {
            let events = self.events("connect", &self.node, fields.clone());
            self.send(Change::Events(events)).await;
        }
        if first && self.wants.users && !user.is_empty() {
            let events = self.events("user_online", &self.node, fields);
            self.hold(HolderKind::User, user, true, events).await;
        }
    }

    /// A connection ended; `last` when it was the user's last on this node.
    pub async fn disconnected(
        &self,
        client: &str,
        user: &str,
        code: u16,
        reason: &str,
        last: bool,
    ) {
        if self.wants.disconnect {
            let fields = json!({"client": client, "user": user, "code": code, "reason": reason});
            let events = self.events("disconnect", &self.node, fields);
            self.send(Change::Events(events)).await;
        }
        if last && self.wants.users && !user.is_empty() {
            let fields = json!({"client": client, "user": user});
            let events = self.events("user_offline", &self.node, fields);
            self.hold(HolderKind::User, user, false, events).await;
        }
    }

    /// A client subscribed; `first` when it is the channel's first
    /// subscriber on this node.
    pub async fn subscribed(&self, client: &str, user: &str, channel: &str, first: bool) {
        let fields = json!({"client": client, "user": user, "channel": channel});
        if self.wants.subscribe {
            let events = self.events("subscribe", &self.node, fields.clone());
            self.send(Change::Events(events)).await;
        }
        if first && self.wants.channels {
            let events = self.events("channel_occupied", &self.node, json!({"channel": channel}));
            self.hold(HolderKind::Channel, channel, true, events).await;
        }
    }

    /// A client left a channel; `last` when no subscriber is left on this
    /// node.
    pub async fn unsubscribed(&self, client: &str, user: &str, channel: &str, last: bool) {
        if self.wants.unsubscribe {
            let fields = json!({"client": client, "user": user, "channel": channel});
            let events = self.events("unsubscribe", &self.node, fields);
            self.send(Change::Events(events)).await;
        }
        if last && self.wants.channels {
            let events = self.events("channel_vacated", &self.node, json!({"channel": channel}));
            self.hold(HolderKind::Channel, channel, false, events).await;
        }
    }

    async fn hold(&self, kind: HolderKind, key: &str, add: bool, events: Vec<NewEvent>) {
        let change = Change::Hold {
            kind,
            key: key.to_string(),
            add,
            events,
        };
        self.send(change).await;
    }

    /// The events a vanished node's last holding of a key leaves behind.
    fn orphaned(&self, kind: HolderKind, key: &str, node: &str) -> Vec<NewEvent> {
        let gone = format!("node {node} gone");
        match kind {
            HolderKind::User => self.events(
                "user_offline",
                &self.node,
                json!({"user": key, "reason": gone}),
            ),
            HolderKind::Channel => self.events(
                "channel_vacated",
                &self.node,
                json!({"channel": key, "reason": gone}),
            ),
        }
    }

    pub fn store(&self) -> &Arc<dyn EventQueue> {
        &self.store
    }

    /// At shutdown, after the connections closed: records what is queued,
    /// stops delivering and forgets this node.
    pub async fn close(&self) {
        self.stop.cancel();
        let tasks = std::mem::take(&mut *self.tasks.lock());
        for mut task in tasks {
            if tokio::time::timeout(Duration::from_secs(5), &mut task)
                .await
                .is_err()
            {
                tracing::warn!("a webhook task did not end in time");
                task.abort();
            }
        }
        if let Err(e) = self.store.leave(&self.uid).await {
            tracing::warn!(error = %crate::report::Chain(&e), "webhook node not forgotten");
        }
    }
}

/// Records queued changes in batches until `stop` (at shutdown, once the
/// connections are closed) finds the queue empty; a failing database is
/// tried again, the queue filling meanwhile.
async fn write(
    store: Arc<dyn EventQueue>,
    uid: String,
    mut changes: mpsc::Receiver<Change>,
    recorded: Arc<Notify>,
    counters: Arc<Counters>,
    stop: CancellationToken,
) {
    let mut batch = Vec::with_capacity(BATCH);
    loop {
        tokio::select! {
            biased;
            n = changes.recv_many(&mut batch, BATCH) => if n == 0 { return },
            _ = stop.cancelled() => return,
        }
        let mut delay = Duration::from_millis(100);
        loop {
            match store.record(&uid, &batch, now_ms()).await {
                Ok(n) => {
                    Counters::add(&counters.webhook_events, n as u64);
                    break;
                }
                Err(e) => {
                    tracing::warn!(error = %crate::report::Chain(&e), "webhook events not recorded yet; trying again");
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(Duration::from_secs(5));
                }
            }
        }
        batch.clear();
        recorded.notify_one();
    }
}

/// Says the node is alive and releases what vanished nodes held.
async fn heartbeat(hooks: Arc<Webhooks>, stop: CancellationToken) {
    let mut ticker = tokio::time::interval(HEARTBEAT_EVERY);
    ticker.tick().await;
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = ticker.tick() => {}
        }
        let store = &hooks.store;
        let now = now_ms();
        if let Err(e) = store.heartbeat(&hooks.uid, now).await {
            tracing::warn!(error = %crate::report::Chain(&e), "webhook heartbeat failed");
            continue;
        }
        let stale = now - NODE_TIMEOUT.as_millis() as i64;
        let orphaned = |kind: HolderKind, key: &str, node: &str| hooks.orphaned(kind, key, node);
        match store.sweep(stale, &orphaned).await {
            Ok(0) => {}
            Ok(n) => tracing::info!(nodes = n, "released what vanished nodes held"),
            Err(e) => {
                tracing::warn!(error = %crate::report::Chain(&e), "vanished nodes not released")
            }
        }
    }
}

pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}
