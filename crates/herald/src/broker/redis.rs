//! The Redis broker: publications travel over Redis pub/sub, one Redis
//! channel per Herald channel (`<prefix>.client.<channel>`), control
//! messages over `<prefix>.control`.
//!
//! Commands go through [`RedisLink`]: one ordered queue drained by one task
//! that sends whatever has piled up as one pipeline, so commands leave in the
//! order they were queued and each waits at most `io_timeout`. Subscriptions
//! live on a separate pub/sub connection owned by its own task, which
//! reconnects with backoff, subscribes again to every channel the hub has,
//! and then reports the reconnection so subscribers can recover.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::future::BoxFuture;
use futures_util::StreamExt;
use herald_protocol::{PresenceEvent, Publication};
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{Cmd, Value};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::{ask, Broker, BrokerError, Inbound, Reply, SyncRequest};
use crate::cluster::wire;
use crate::config::RedisConfig;

struct Job {
    cmd: Cmd,
    reply: Reply<Value>,
}

/// An ordered, pipelined command queue to one Redis.
#[derive(Clone)]
pub struct RedisLink {
    client: redis::Client,
    queue: mpsc::UnboundedSender<Job>,
    prefix: Arc<str>,
    io_timeout: Duration,
}

/// The Redis servers of a cluster: each channel lives on one of them,
/// chosen by a hash of its name that every node computes alike. Control
/// messages use the first.
#[derive(Clone)]
pub struct RedisShards {
    links: Arc<[RedisLink]>,
}

impl RedisShards {
    /// Connects to every address of `cfg`; fails clearly if one is down.
    pub async fn connect(cfg: &RedisConfig) -> Result<Self, BrokerError> {
        let mut links = Vec::new();
        for url in cfg.urls() {
            links.push(RedisLink::connect(&url, cfg).await?);
        }
        Ok(Self {
            links: links.into(),
        })
    }

    /// The shard `channel` lives on.
    pub fn index(&self, channel: &str) -> usize {
        shard_of(channel, self.links.len())
    }

    pub fn for_channel(&self, channel: &str) -> &RedisLink {
        &self.links[self.index(channel)]
    }

    pub fn first(&self) -> &RedisLink {
        &self.links[0]
    }
}

/// FNV-1a of the channel name: stable across processes, versions and
/// platforms, so every node puts a channel on the same shard.
fn shard_of(channel: &str, shards: usize) -> usize {
    if shards <= 1 {
        return 0;
    }
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in channel.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    (h % shards as u64) as usize
}

impl RedisLink {
    /// Connects to `url` (failing clearly when Redis cannot be reached) and
    /// starts the queue's task.
    pub async fn connect(url: &str, cfg: &RedisConfig) -> Result<Self, BrokerError> {
        let url = url.to_string();
        let client = redis::Client::open(url.as_str()).map_err(unavailable)?;
        let io_timeout = cfg.io_timeout.0;
        let manager_cfg = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(cfg.connect_timeout.0))
            .set_response_timeout(Some(io_timeout))
            .set_number_of_retries(2)
            .set_max_delay(Duration::from_secs(2));
        let conn = tokio::time::timeout(
            cfg.connect_timeout.0 * 3,
            ConnectionManager::new_with_config(client.clone(), manager_cfg),
        )
        .await
        .map_err(|_| {
            BrokerError::Unavailable(format!("connecting to {} timed out", redacted(&url)))
        })?
        .map_err(|e| BrokerError::Unavailable(format!("{}: {e}", redacted(&url))))?;
        let (queue, jobs) = mpsc::unbounded_channel();
        tokio::spawn(drain(conn, jobs, io_timeout));
        Ok(Self {
            client,
            queue,
            prefix: Arc::from(cfg.prefix.as_str()),
            io_timeout,
        })
    }

    /// Queues a command now; the future resolves with its reply.
    pub fn send(&self, cmd: Cmd) -> BoxFuture<'static, Result<Value, BrokerError>> {
        ask(&self.queue, |reply| Job { cmd, reply })
    }

    /// A key or channel name under the configured prefix.
    pub fn key(&self, kind: &str, name: &str) -> String {
        format!("{}.{kind}.{name}", self.prefix)
    }

    /// The pub/sub channel of a Herald channel.
    pub fn channel_key(&self, channel: &str) -> String {
        self.key("client", channel)
    }

    fn control_key(&self) -> String {
        format!("{}.control", self.prefix)
    }
}

/// How long a link that failed answers every command with an error at once,
/// before it lets one batch try Redis again.
const DOWN_PROBE_INTERVAL: Duration = Duration::from_millis(250);

async fn drain(mut conn: ConnectionManager, mut jobs: mpsc::UnboundedReceiver<Job>, io: Duration) {
    let mut batch = Vec::with_capacity(256);
    // While Redis is failing, commands fail at once instead of each batch
    // waiting out the timeout, so nothing piles up.
    let mut down_until: Option<tokio::time::Instant> = None;
    while jobs.recv_many(&mut batch, 256).await > 0 {
        if down_until.is_some_and(|t| tokio::time::Instant::now() < t) {
            let replies = batch.drain(..).map(|job| job.reply).collect();
            fail_all(replies, "redis is unreachable");
            continue;
        }
        let mut pipe = redis::pipe();
        pipe.ignore_errors();
        let replies: Vec<_> = batch
            .drain(..)
            .map(|job| {
                pipe.add_command(job.cmd);
                job.reply
            })
            .collect();
        let result = tokio::time::timeout(io, pipe.query_async::<Vec<Value>>(&mut conn)).await;
        down_until = Some(tokio::time::Instant::now() + DOWN_PROBE_INTERVAL);
        match result {
            Ok(Ok(values)) => {
                down_until = None;
                for (reply, value) in replies.into_iter().zip(values) {
                    let _ = reply.send(value.extract_error().map_err(unavailable));
                }
            }
            Ok(Err(e)) => fail_all(replies, &e.to_string()),
            Err(_) => fail_all(replies, "redis did not answer in time"),
        }
    }
}

fn fail_all(replies: Vec<Reply<Value>>, why: &str) {
    for reply in replies {
        let _ = reply.send(Err(BrokerError::Unavailable(why.to_string())));
    }
}

fn unavailable(e: redis::RedisError) -> BrokerError {
    BrokerError::Unavailable(e.to_string())
}

/// The address without its password, for messages.
pub fn redacted(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(s), Some(at)) if at > s => format!("{}***{}", &url[..s + 3], &url[at..]),
        _ => url.to_string(),
    }
}

pub struct RedisBroker {
    shards: RedisShards,
    /// Per shard, the requests to its pub/sub task.
    syncs: Vec<mpsc::UnboundedSender<SyncRequest>>,
    stop: CancellationToken,
}

/// Which channels one shard's pub/sub connection carries.
#[derive(Clone, Copy)]
struct ShardRole {
    index: usize,
    of: usize,
}

impl ShardRole {
    fn carries(&self, channel: &str) -> bool {
        shard_of(channel, self.of) == self.index
    }
    fn has_control(&self) -> bool {
        self.index == 0
    }
}

impl RedisBroker {
    pub async fn connect(
        cfg: &RedisConfig,
        inbound: Inbound,
        stop: CancellationToken,
    ) -> Result<Self, BrokerError> {
        let shards = RedisShards::connect(cfg).await?;
        let mut syncs = Vec::new();
        for (index, link) in shards.links.iter().enumerate() {
            let role = ShardRole {
                index,
                of: shards.links.len(),
            };
            let (sync, requests) = mpsc::unbounded_channel();
            // The first connection is made here, so a node whose Redis is
            // down does not start.
            let pubsub = subscribe_all(link, &inbound, role).await?;
            tokio::spawn(pubsub_task(
                link.clone(),
                inbound.clone(),
                requests,
                pubsub,
                role,
                stop.clone(),
            ));
            syncs.push(sync);
        }
        Ok(Self {
            shards,
            syncs,
            stop,
        })
    }

    /// The Redis servers, shared with the history store and presence.
    pub fn shards(&self) -> &RedisShards {
        &self.shards
    }

    /// Publishes on the pub/sub channel of `channel` (on its shard), or on
    /// the control channel when `channel` is `None`.
    fn publish_bytes(
        &self,
        channel: Option<&str>,
        payload: Bytes,
    ) -> BoxFuture<'static, Result<(), BrokerError>> {
        let (link, key) = match channel {
            Some(c) => {
                let link = self.shards.for_channel(c);
                (link, link.channel_key(c))
            }
            None => (self.shards.first(), self.shards.first().control_key()),
        };
        let mut cmd = redis::cmd("PUBLISH");
        cmd.arg(key).arg(payload.as_ref());
        let sent = link.send(cmd);
        Box::pin(async move { sent.await.map(|_| ()) })
    }
}

impl Drop for RedisBroker {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

impl Broker for RedisBroker {
    fn publish(&self, p: Arc<Publication>) -> BoxFuture<'static, Result<(), BrokerError>> {
        self.publish_bytes(Some(&p.channel), wire::encode_publication_message(&p))
    }

    fn publish_presence(
        &self,
        e: Arc<PresenceEvent>,
    ) -> BoxFuture<'static, Result<(), BrokerError>> {
        self.publish_bytes(Some(&e.channel), wire::encode_presence_message(&e))
    }

    fn publish_control(&self, message: Bytes) -> BoxFuture<'static, Result<(), BrokerError>> {
        self.publish_bytes(None, message)
    }

    fn sync_channel(&self, channel: &str) -> BoxFuture<'static, Result<(), BrokerError>> {
        let channel = channel.to_string();
        ask(&self.syncs[self.shards.index(&channel)], |done| {
            SyncRequest { channel, done }
        })
    }
}

/// An open pub/sub connection and what it is subscribed to.
struct PubSub {
    sink: redis::aio::PubSubSink,
    stream: redis::aio::PubSubStream,
    subscribed: HashSet<String>,
}

/// Opens a pub/sub connection subscribed to the control channel and to
/// every channel with local subscribers.
async fn subscribe_all(
    link: &RedisLink,
    inbound: &Inbound,
    role: ShardRole,
) -> Result<PubSub, BrokerError> {
    let connect = async {
        let (mut sink, stream) = link.client.get_async_pubsub().await?.split();
        if role.has_control() {
            sink.subscribe(link.control_key()).await?;
        }
        let channels: Vec<String> = inbound
            .channels()
            .into_iter()
            .filter(|c| role.carries(c))
            .collect();
        let keys: Vec<String> = channels.iter().map(|c| link.channel_key(c)).collect();
        if !keys.is_empty() {
            sink.subscribe(&keys).await?;
        }
        Ok::<_, redis::RedisError>(PubSub {
            sink,
            stream,
            subscribed: channels.into_iter().collect(),
        })
    };
    tokio::time::timeout(link.io_timeout, connect)
        .await
        .map_err(|_| BrokerError::Unavailable("redis pub/sub connection timed out".into()))?
        .map_err(unavailable)
}

async fn pubsub_task(
    link: RedisLink,
    inbound: Inbound,
    mut requests: mpsc::UnboundedReceiver<SyncRequest>,
    first: PubSub,
    role: ShardRole,
    stop: CancellationToken,
) {
    let mut current = Some(first);
    let mut backoff = Duration::from_millis(50);
    let mut retry_at = tokio::time::Instant::now();
    loop {
        let mut ps = match current.take() {
            Some(ps) => ps,
            None => {
                // Answer requests while disconnected (the reconnection
                // subscribes to whatever the hub has by then), without
                // putting the next attempt off.
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = tokio::time::sleep_until(retry_at) => {}
                    Some(r) = requests.recv() => {
                        let _ = r.done.send(Err(BrokerError::Unavailable("redis is unreachable; reconnecting".into())));
                        continue;
                    }
                }
                match subscribe_all(&link, &inbound, role).await {
                    Ok(ps) => {
                        tracing::info!("redis pub/sub reconnected");
                        backoff = Duration::from_millis(50);
                        inbound.reconnected();
                        ps
                    }
                    Err(e) => {
                        backoff = (backoff * 2).min(Duration::from_secs(2));
                        retry_at = tokio::time::Instant::now() + backoff;
                        tracing::warn!(error = %e, retry_in = ?backoff, "redis pub/sub reconnect failed");
                        continue;
                    }
                }
            }
        };
        let control = link.control_key();
        let prefix = link.channel_key("");
        let mut ping = tokio::time::interval(link.io_timeout);
        ping.tick().await;
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                msg = ps.stream.next() => {
                    let Some(msg) = msg else {
                        tracing::warn!("redis pub/sub connection lost");
                        break;
                    };
                    let name = msg.get_channel_name();
                    if name == control {
                        inbound.control(Bytes::copy_from_slice(msg.get_payload_bytes()));
                    } else if name.starts_with(&prefix) {
                        inbound.message(msg.get_payload_bytes());
                    }
                }
                Some(r) = requests.recv() => {
                    let result = sync(&link, &inbound, &mut ps, &r.channel).await;
                    let failed = result.is_err();
                    let _ = r.done.send(result);
                    if failed {
                        break;
                    }
                }
                _ = ping.tick() => {
                    let alive = tokio::time::timeout(link.io_timeout, ps.sink.ping::<Value>()).await;
                    if !matches!(alive, Ok(Ok(_))) {
                        tracing::warn!("redis pub/sub connection unresponsive");
                        break;
                    }
                }
            }
        }
    }
}

async fn sync(
    link: &RedisLink,
    inbound: &Inbound,
    ps: &mut PubSub,
    channel: &str,
) -> Result<(), BrokerError> {
    let want = inbound.has_subscribers(channel);
    let have = ps.subscribed.contains(channel);
    let key = link.channel_key(channel);
    let op = async {
        if want && !have {
            ps.sink.subscribe(&key).await?;
            ps.subscribed.insert(channel.to_string());
        } else if !want && have {
            ps.sink.unsubscribe(&key).await?;
            ps.subscribed.remove(channel);
        }
        Ok::<_, redis::RedisError>(())
    };
    tokio::time::timeout(link.io_timeout, op)
        .await
        .map_err(|_| BrokerError::Unavailable("redis subscribe timed out".into()))?
        .map_err(unavailable)
}

#[cfg(test)]
mod tests {
    #[test]
    fn shards_are_stable_and_spread() {
        // Fixed values: every node and every version must agree.
        assert_eq!(super::shard_of("news", 1), 0);
        assert_eq!(
            super::shard_of("", 3),
            (0xcbf2_9ce4_8422_2325u64 % 3) as usize
        );
        let mut counts = [0; 4];
        for i in 0..4000 {
            counts[super::shard_of(&format!("chat:{i}"), 4)] += 1;
        }
        assert!(counts.iter().all(|&n| n > 800), "{counts:?}");
    }

    #[test]
    fn passwords_are_redacted() {
        assert_eq!(super::redacted("redis://:pw@h:1/2"), "redis://***@h:1/2");
        assert_eq!(super::redacted("redis://h:1"), "redis://h:1");
    }
}
