//! Durable webhooks (`webhooks`): connection, subscription and presence
//! events, written to storage before they are sent, then POSTed to each
//! webhook that wants them — signed, retried with growing delays, kept as
//! dead letters after the last attempt — at least once, across restarts.
//! A Pusher app's webhooks (`pusher.apps[].webhooks`) go through the same
//! queue in Pusher's format ([`Style::Pusher`]).
//!
//! Sessions hand what happened to a bounded queue (a full one makes them
//! wait, never fan-out); one writer task records it in batches, one
//! transaction each; a delivery task claims due events, sends them with
//! bounded concurrency and records how each attempt ended.
//!
//! "User online" and "channel occupied" come from counting: every
//! connection of a user (subscription to a channel) counts one up when it
//! is made and one down when it ends. The writer keeps this node's counts,
//! in the order the queue gives them, and tells storage only when a count
//! leaves or reaches zero: there every node records which keys it holds,
//! and the first holder anywhere makes the event, the last one gone its
//! opposite. A node that vanishes without a goodbye is released by the
//! others after [`NODE_TIMEOUT`]; one that finds itself released (it was
//! away) holds its keys again.

mod deliver;
mod writer;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use serde_json::{json, Map, Value};
use tokio::sync::{mpsc, Notify};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::clock::now_ms;
use crate::config::pusher::WEBHOOK_EVENTS as PUSHER_EVENTS;
use crate::config::webhook::{Webhook, EVENTS};
use crate::config::Config;
use crate::metrics::Counters;
use crate::store::event_queue::{EventQueue, HolderKind, NewEvent};
use crate::store::StoreError;
use writer::Writer;

/// Items waiting for the writer; more make sessions wait.
const QUEUE: usize = 8192;
/// Most items recorded in one transaction.
const BATCH: usize = 512;
/// How often a node says it is alive.
const HEARTBEAT_EVERY: Duration = Duration::from_secs(10);
/// A node unseen this long is gone: its users and channels are released.
pub const NODE_TIMEOUT: Duration = Duration::from_secs(60);

/// What sessions tell the writer.
#[derive(Debug)]
enum Item {
    /// Events written as they are.
    Events(Vec<NewEvent>),
    /// One connection of a user, or subscription to a channel, came (`up`)
    /// or went; `client` made it.
    Count {
        kind: HolderKind,
        key: String,
        up: bool,
        client: String,
    },
    /// Storage forgot this node: hold every counted key again.
    Reassert,
}

/// Which events some webhook wants.
#[derive(Debug, Default, Clone, Copy)]
struct Wants {
    connect: bool,
    disconnect: bool,
    subscribe: bool,
    unsubscribe: bool,
    /// user_online or user_offline: users are counted.
    users: bool,
    /// channel_occupied or channel_vacated.
    channels: bool,
    /// Pusher's member_added or member_removed.
    members: bool,
    /// Pusher's client_event.
    client_events: bool,
    /// Pusher's cache_miss.
    cache_misses: bool,
    /// Pusher's subscription_count.
    counts: bool,
}

/// A webhook and the way its events are written and signed.
pub struct Target {
    pub hook: Webhook,
    pub style: Style,
}

pub enum Style {
    /// Herald's own: one event per body, `X-Herald-Signature`.
    Herald,
    /// A Pusher app's: `{"time_ms", "events": [one event]}` about the app's
    /// channels (named without `prefix`, its namespace), with
    /// `X-Pusher-Key` and `X-Pusher-Signature` (hex HMAC-SHA256 of the
    /// body with the app's secret).
    Pusher { key: String, prefix: String },
}

impl Target {
    /// Every webhook of `config`: Herald's own, then the Pusher apps'.
    pub fn all(config: &Config) -> Vec<Target> {
        let herald = config.webhooks.iter().map(|h| Target {
            hook: h.clone(),
            style: Style::Herald,
        });
        let pusher = config.pusher.apps.iter().flat_map(|app| {
            app.hooks().map(|hook| Target {
                hook,
                style: Style::Pusher {
                    key: app.key.clone(),
                    prefix: format!("{}:", app.namespace),
                },
            })
        });
        herald.chain(pusher).collect()
    }

    fn wants(&self, event: &str) -> bool {
        let known: &[&str] = match self.style {
            Style::Herald => &EVENTS,
            Style::Pusher { .. } => &PUSHER_EVENTS,
        };
        known.contains(&event) && self.hook.wants(event)
    }

    /// The body of `event` for this webhook, if it is one for it.
    fn body(
        &self,
        id: &str,
        event: &str,
        time_ms: i64,
        node: &str,
        fields: &Map<String, Value>,
    ) -> Option<String> {
        if !self.wants(event) {
            return None;
        }
        match &self.style {
            Style::Herald => {
                let mut body = Map::new();
                body.insert("id".into(), json!(id));
                body.insert("event".into(), json!(event));
                body.insert("time_ms".into(), json!(time_ms));
                body.insert("node".into(), json!(node));
                body.extend(fields.clone());
                Some(Value::Object(body).to_string())
            }
            Style::Pusher { prefix, .. } => {
                let channel = fields
                    .get("channel")?
                    .as_str()?
                    .strip_prefix(prefix.as_str())?;
                // A user's own `#server-to-user-` channel is not the app's.
                if channel.starts_with('#') {
                    return None;
                }
                let mut e = Map::new();
                e.insert("name".into(), json!(event));
                e.insert("channel".into(), json!(channel));
                for field in [
                    "event",
                    "data",
                    "socket_id",
                    "user_id",
                    "subscription_count",
                ] {
                    if let Some(v) = fields.get(field) {
                        e.insert(field.into(), v.clone());
                    }
                }
                Some(json!({"time_ms": time_ms, "events": [e]}).to_string())
            }
        }
    }
}

/// The holder key of a member: `user` in presence channel `channel`.
fn member_key(channel: &str, user: &str) -> String {
    json!([channel, user]).to_string()
}

/// Makes the rows of an event: one per webhook that wants it.
struct Maker {
    targets: Arc<Vec<Target>>,
    /// This node's name, in every body.
    node: String,
}

impl Maker {
    fn make(&self, event: &str, fields: Value) -> Vec<NewEvent> {
        let fields = match fields {
            Value::Object(map) => map,
            _ => Map::new(),
        };
        let time_ms = now_ms();
        self.targets
            .iter()
            .filter_map(|t| {
                let id = uuid::Uuid::new_v4().to_string();
                let body = t.body(&id, event, time_ms, &self.node, &fields)?;
                Some(NewEvent {
                    id,
                    hook: t.hook.name.clone(),
                    event: event.to_string(),
                    body,
                })
            })
            .collect()
    }

    /// The events of a key reaching (`up`) or leaving zero holders.
    fn edge(&self, kind: HolderKind, key: &str, up: bool, extra: Value) -> Vec<NewEvent> {
        let member = || {
            let (channel, user): (String, String) = serde_json::from_str(key).unwrap_or_default();
            json!({"channel": channel, "user_id": user})
        };
        let (event, mut fields) = match (kind, up) {
            (HolderKind::User, true) => ("user_online", json!({"user": key})),
            (HolderKind::User, false) => ("user_offline", json!({"user": key})),
            (HolderKind::Channel, true) => ("channel_occupied", json!({"channel": key})),
            (HolderKind::Channel, false) => ("channel_vacated", json!({"channel": key})),
            (HolderKind::Member, true) => ("member_added", member()),
            (HolderKind::Member, false) => ("member_removed", member()),
        };
        if let (Some(f), Value::Object(extra)) = (fields.as_object_mut(), extra) {
            f.extend(extra);
        }
        self.make(event, fields)
    }
}

pub struct Webhooks {
    maker: Arc<Maker>,
    wants: Wants,
    /// This run's uid: its holder rows and claims carry it.
    uid: String,
    queue: mpsc::Sender<Item>,
    store: Arc<dyn EventQueue>,
    stop: CancellationToken,
    tasks: Mutex<Vec<JoinHandle<()>>>,
    /// When this node last told a cache miss, by channel.
    misses: Mutex<HashMap<String, std::time::Instant>>,
}

/// A cache channel's misses on one node are told once in this long (many
/// sockets subscribing to an empty channel at once make one webhook).
const MISS_QUIET: Duration = Duration::from_secs(5);

impl Webhooks {
    /// Says the node is alive, then starts the writer, delivery and
    /// heartbeat tasks.
    pub async fn open(
        targets: Vec<Target>,
        store: Arc<dyn EventQueue>,
        node: &str,
        uid: &str,
        counters: Arc<Counters>,
    ) -> Result<Arc<Self>, String> {
        let chain = |e: StoreError| crate::report::Chain(&e).to_string();
        store.heartbeat(uid, now_ms()).await.map_err(chain)?;
        store.recover().await.map_err(chain)?;
        let any = |events: &[&str]| targets.iter().any(|t| events.iter().any(|e| t.wants(e)));
        let wants = Wants {
            connect: any(&["connect"]),
            disconnect: any(&["disconnect"]),
            subscribe: any(&["subscribe"]),
            unsubscribe: any(&["unsubscribe"]),
            users: any(&["user_online", "user_offline"]),
            channels: any(&["channel_occupied", "channel_vacated"]),
            members: any(&["member_added", "member_removed"]),
            client_events: any(&["client_event"]),
            cache_misses: any(&["cache_miss"]),
            counts: any(&["subscription_count"]),
        };
        let targets = Arc::new(targets);
        let maker = Arc::new(Maker {
            targets: targets.clone(),
            node: node.to_string(),
        });
        let delivery = deliver::Delivery::new(targets, store.clone(), uid, counters.clone())?;
        let (queue, items) = mpsc::channel(QUEUE);
        let stop = CancellationToken::new();
        let recorded = Arc::new(Notify::new());
        let this = Arc::new(Self {
            maker: maker.clone(),
            wants,
            uid: uid.to_string(),
            queue,
            store: store.clone(),
            stop: stop.clone(),
            tasks: Mutex::new(Vec::new()),
            misses: Mutex::new(HashMap::new()),
        });
        let writer = Writer {
            store,
            maker,
            uid: uid.to_string(),
            counts: HashMap::new(),
            recorded: recorded.clone(),
            counters,
        };
        let tasks = [
            tokio::spawn(writer.run(items, stop.clone())),
            tokio::spawn(delivery.run(recorded, stop.clone())),
            tokio::spawn(heartbeat(this.clone(), stop)),
        ];
        this.tasks.lock().extend(tasks);
        Ok(this)
    }

    async fn send(&self, item: Item) {
        if self.queue.send(item).await.is_err() {
            tracing::warn!("webhook event after shutdown dropped");
        }
    }

    async fn count(&self, kind: HolderKind, key: &str, up: bool, client: &str) {
        let item = Item::Count {
            kind,
            key: key.to_string(),
            up,
            client: client.to_string(),
        };
        self.send(item).await;
    }

    /// A connection was made.
    pub async fn connected(&self, client: &str, user: &str) {
        if self.wants.connect {
            let events = self
                .maker
                .make("connect", json!({"client": client, "user": user}));
            self.send(Item::Events(events)).await;
        }
        if self.wants.users && !user.is_empty() {
            self.count(HolderKind::User, user, true, client).await;
        }
    }

    /// A connection (one that [`Webhooks::connected`] told of) ended.
    pub async fn disconnected(&self, client: &str, user: &str, code: u16, reason: &str) {
        if self.wants.disconnect {
            let fields = json!({"client": client, "user": user, "code": code, "reason": reason});
            let events = self.maker.make("disconnect", fields);
            self.send(Item::Events(events)).await;
        }
        if self.wants.users && !user.is_empty() {
            self.count(HolderKind::User, user, false, client).await;
        }
    }

    /// A client subscribed.
    pub async fn subscribed(&self, client: &str, user: &str, channel: &str) {
        self.channel_event("subscribe", self.wants.subscribe, client, user, channel)
            .await;
        if self.wants.channels {
            self.count(HolderKind::Channel, channel, true, client).await;
        }
    }

    /// A client's subscription ended.
    pub async fn unsubscribed(&self, client: &str, user: &str, channel: &str) {
        self.channel_event("unsubscribe", self.wants.unsubscribe, client, user, channel)
            .await;
        if self.wants.channels {
            self.count(HolderKind::Channel, channel, false, client)
                .await;
        }
    }

    /// A user joined (`up`) or left presence channel `channel` through one
    /// connection, `client` (Pusher's members).
    pub async fn member(&self, channel: &str, user: &str, up: bool, client: &str) {
        if self.wants.members {
            let key = member_key(channel, user);
            self.count(HolderKind::Member, &key, up, client).await;
        }
    }

    /// A Pusher client event, relayed by socket `socket_id` (of `user` in a
    /// presence channel); `data` as the socket sent it.
    pub async fn client_event(
        &self,
        channel: &str,
        event: &str,
        data: &str,
        socket_id: &str,
        user: Option<&str>,
    ) {
        if self.wants.client_events {
            let mut fields = json!({"channel": channel, "event": event, "data": data,
                                    "socket_id": socket_id});
            if let Some(user) = user {
                fields["user_id"] = json!(user);
            }
            self.send(Item::Events(self.maker.make("client_event", fields)))
                .await;
        }
    }

    /// A channel's subscriber count over the cluster changed (Pusher's
    /// subscription counting).
    pub async fn subscription_count(&self, channel: &str, count: u64) {
        if self.wants.counts {
            let fields = json!({"channel": channel, "subscription_count": count});
            let events = self.maker.make("subscription_count", fields);
            self.send(Item::Events(events)).await;
        }
    }

    /// A Pusher socket subscribed to a cache channel with nothing cached;
    /// told once per channel in [`MISS_QUIET`] on this node.
    pub async fn cache_miss(&self, channel: &str) {
        if !self.wants.cache_misses {
            return;
        }
        let now = std::time::Instant::now();
        {
            let mut misses = self.misses.lock();
            if misses
                .get(channel)
                .is_some_and(|told| now.duration_since(*told) < MISS_QUIET)
            {
                return;
            }
            if misses.len() >= 4096 {
                misses.retain(|_, told| now.duration_since(*told) < MISS_QUIET);
            }
            misses.insert(channel.to_string(), now);
        }
        let fields = json!({ "channel": channel });
        self.send(Item::Events(self.maker.make("cache_miss", fields)))
            .await;
    }

    async fn channel_event(
        &self,
        event: &str,
        wanted: bool,
        client: &str,
        user: &str,
        channel: &str,
    ) {
        if wanted {
            let fields = json!({"client": client, "user": user, "channel": channel});
            self.send(Item::Events(self.maker.make(event, fields)))
                .await;
        }
    }

    pub fn store(&self) -> &Arc<dyn EventQueue> {
        &self.store
    }

    /// At shutdown, after the connections closed: records what is queued,
    /// stops delivering, releases what the node still holds (telling the
    /// offline and vacated events) and forgets the node.
    pub async fn close(&self) {
        self.stop.cancel();
        let tasks = std::mem::take(&mut *self.tasks.lock());
        let ended = futures_util::future::join_all(tasks.into_iter().map(|mut task| async move {
            if tokio::time::timeout(Duration::from_secs(5), &mut task)
                .await
                .is_err()
            {
                tracing::warn!("a webhook task did not end in time");
                task.abort();
            }
        }));
        ended.await;
        let orphaned = |kind: HolderKind, key: &str, _: &str| {
            self.maker
                .edge(kind, key, false, json!({"reason": "node shut down"}))
        };
        if let Err(e) = self.store.leave(&self.uid, now_ms(), &orphaned).await {
            tracing::warn!(error = %crate::report::Chain(&e), "webhook node not released");
        }
    }
}

/// Says the node is alive (holding its keys again when storage had let it
/// go) and releases what vanished nodes held.
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
        match store.heartbeat(&hooks.uid, now).await {
            Ok(true) => {}
            Ok(false) => {
                tracing::warn!("storage had let this node go (it was away): holding its users and channels again");
                hooks.send(Item::Reassert).await;
            }
            Err(e) => {
                tracing::warn!(error = %crate::report::Chain(&e), "webhook heartbeat failed");
                continue;
            }
        }
        let stale = now - NODE_TIMEOUT.as_millis() as i64;
        let orphaned = |kind: HolderKind, key: &str, node: &str| {
            hooks.maker.edge(
                kind,
                key,
                false,
                json!({"reason": format!("node {node} gone")}),
            )
        };
        match store.sweep(stale, now, &orphaned).await {
            Ok(0) => {}
            Ok(n) => tracing::info!(nodes = n, "released what vanished nodes held"),
            Err(e) => {
                tracing::warn!(error = %crate::report::Chain(&e), "vanished nodes not released")
            }
        }
    }
}
