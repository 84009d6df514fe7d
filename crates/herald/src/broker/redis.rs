//! The Redis broker: publications travel over Redis pub/sub, one Redis
//! channel per Herald channel (`<prefix>.client.<channel>`) on the channel's
//! shard, control messages over `<prefix>.control` on the first.
//!
//! Publishing goes through the shards' ordered [`RedisLink`] queues.
//! Subscriptions live on a separate pub/sub connection per shard, owned by
//! its own task, which reconnects with backoff, subscribes again to every
//! channel the hub has, and then reports the reconnection so subscribers
//! can recover.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::future::BoxFuture;
use futures_util::StreamExt;
use herald_protocol::{PresenceEvent, Publication};
use redis::Value;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::{ask, Broker, BrokerError, Inbound, SyncRequest};
use crate::redis_link::{shard_of, RedisError, RedisLink, RedisShards};
use crate::wire;

/// Subscription requests queued for one shard's pub/sub task; a subscriber
/// waits for room.
const SYNC_QUEUE: usize = 1024;

pub struct RedisBroker {
    shards: RedisShards,
    /// Per shard, the requests to its pub/sub task.
    syncs: Vec<mpsc::Sender<SyncRequest>>,
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
    /// Subscribes on every shard (failing when one cannot be reached, so
    /// that a node whose Redis is down does not start) and starts their
    /// pub/sub tasks, which end with `stop`.
    pub async fn start(
        shards: RedisShards,
        inbound: Inbound,
        stop: CancellationToken,
    ) -> Result<Self, BrokerError> {
        let mut syncs = Vec::new();
        let count = shards.links().len();
        for (index, link) in shards.links().iter().enumerate() {
            let role = ShardRole { index, of: count };
            let (sync, requests) = mpsc::channel(SYNC_QUEUE);
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
        Box::pin(async move {
            sent.await?;
            Ok(())
        })
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

    /// A PING to every shard.
    fn check(&self) -> BoxFuture<'static, Result<(), BrokerError>> {
        let pings: Vec<_> = self
            .shards
            .links()
            .iter()
            .map(|link| link.send(redis::cmd("PING")))
            .collect();
        Box::pin(async move {
            for ping in futures_util::future::join_all(pings).await {
                ping?;
            }
            Ok(())
        })
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
        let (mut sink, stream) = link.client().get_async_pubsub().await?.split();
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
    let connected = tokio::time::timeout(link.io_timeout(), connect)
        .await
        .map_err(|_| RedisError::Timeout(link.io_timeout()))?;
    Ok(connected.map_err(RedisError::Command)?)
}

async fn pubsub_task(
    link: RedisLink,
    inbound: Inbound,
    mut requests: mpsc::Receiver<SyncRequest>,
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
                        let _ = r.done.send(Err(RedisError::Unreachable.into()));
                        continue;
                    }
                }
                match subscribe_all(&link, &inbound, role).await {
                    Ok(ps) => {
                        tracing::info!("redis pub/sub reconnected");
                        backoff = Duration::from_millis(50);
                        inbound.reconnected().await;
                        ps
                    }
                    Err(e) => {
                        backoff = (backoff * 2).min(Duration::from_secs(2));
                        retry_at = tokio::time::Instant::now() + backoff;
                        tracing::warn!(error = %crate::report::Chain(&e), retry_in = ?backoff, "redis pub/sub reconnect failed");
                        continue;
                    }
                }
            }
        };
        let control = link.control_key();
        let prefix = link.channel_key("");
        let mut ping = tokio::time::interval(link.io_timeout());
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
                        inbound.control(Bytes::copy_from_slice(msg.get_payload_bytes())).await;
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
                    let alive = tokio::time::timeout(link.io_timeout(), ps.sink.ping::<Value>()).await;
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
    let done = tokio::time::timeout(link.io_timeout(), op)
        .await
        .map_err(|_| RedisError::Timeout(link.io_timeout()))?;
    Ok(done.map_err(RedisError::Command)?)
}
