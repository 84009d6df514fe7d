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
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use super::{Broker, BrokerError, Inbound};
use crate::cluster::wire;
use crate::config::RedisConfig;

struct Job {
    cmd: Cmd,
    reply: oneshot::Sender<Result<Value, BrokerError>>,
}

/// An ordered, pipelined command queue to one Redis.
#[derive(Clone)]
pub struct RedisLink {
    client: redis::Client,
    queue: mpsc::UnboundedSender<Job>,
    prefix: Arc<str>,
    io_timeout: Duration,
}

impl RedisLink {
    /// Connects (failing clearly when Redis cannot be reached) and starts
    /// the queue's task.
    pub async fn connect(cfg: &RedisConfig) -> Result<Self, BrokerError> {
        let url = cfg.url();
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
        let (reply, answer) = oneshot::channel();
        let queued = self.queue.send(Job { cmd, reply });
        Box::pin(async move {
            queued.map_err(|_| BrokerError::Unavailable("redis link closed".into()))?;
            answer
                .await
                .map_err(|_| BrokerError::Unavailable("redis link closed".into()))?
        })
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

async fn drain(mut conn: ConnectionManager, mut jobs: mpsc::UnboundedReceiver<Job>, io: Duration) {
    let mut batch = Vec::with_capacity(256);
    while jobs.recv_many(&mut batch, 256).await > 0 {
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
        match result {
            Ok(Ok(values)) => {
                for (reply, value) in replies.into_iter().zip(values) {
                    let _ = reply.send(value.extract_error().map_err(unavailable));
                }
            }
            Ok(Err(e)) => fail_all(replies, &e.to_string()),
            Err(_) => fail_all(replies, "redis did not answer in time"),
        }
    }
}

fn fail_all(replies: Vec<oneshot::Sender<Result<Value, BrokerError>>>, why: &str) {
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

/// A request to the pub/sub task to match the hub for one channel.
struct SyncRequest {
    channel: String,
    done: oneshot::Sender<Result<(), BrokerError>>,
}

pub struct RedisBroker {
    link: RedisLink,
    sync: mpsc::UnboundedSender<SyncRequest>,
    stop: CancellationToken,
}

impl RedisBroker {
    pub async fn connect(
        cfg: &RedisConfig,
        inbound: Inbound,
        stop: CancellationToken,
    ) -> Result<Self, BrokerError> {
        let link = RedisLink::connect(cfg).await?;
        let (sync, requests) = mpsc::unbounded_channel();
        // The first connection is made here, so a node whose Redis is down
        // does not start.
        let pubsub = subscribe_all(&link, &inbound).await?;
        tokio::spawn(pubsub_task(
            link.clone(),
            inbound,
            requests,
            pubsub,
            stop.clone(),
        ));
        Ok(Self { link, sync, stop })
    }

    /// The command queue, shared with the Redis history store.
    pub fn link(&self) -> &RedisLink {
        &self.link
    }

    fn publish_bytes(
        &self,
        channel: String,
        payload: Bytes,
    ) -> BoxFuture<'static, Result<(), BrokerError>> {
        let mut cmd = redis::cmd("PUBLISH");
        cmd.arg(channel).arg(payload.as_ref());
        let sent = self.link.send(cmd);
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
        self.publish_bytes(
            self.link.channel_key(&p.channel),
            wire::encode_publication_message(&p),
        )
    }

    fn publish_presence(
        &self,
        e: Arc<PresenceEvent>,
    ) -> BoxFuture<'static, Result<(), BrokerError>> {
        self.publish_bytes(
            self.link.channel_key(&e.channel),
            wire::encode_presence_message(&e),
        )
    }

    fn publish_control(&self, message: Bytes) -> BoxFuture<'static, Result<(), BrokerError>> {
        self.publish_bytes(self.link.control_key(), message)
    }

    fn sync_channel(&self, channel: &str) -> BoxFuture<'static, Result<(), BrokerError>> {
        let (done, answer) = oneshot::channel();
        let queued = self.sync.send(SyncRequest {
            channel: channel.to_string(),
            done,
        });
        Box::pin(async move {
            queued.map_err(|_| BrokerError::Unavailable("broker stopped".into()))?;
            answer
                .await
                .map_err(|_| BrokerError::Unavailable("broker stopped".into()))?
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
async fn subscribe_all(link: &RedisLink, inbound: &Inbound) -> Result<PubSub, BrokerError> {
    let connect = async {
        let (mut sink, stream) = link.client.get_async_pubsub().await?.split();
        sink.subscribe(link.control_key()).await?;
        let channels = inbound.channels();
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
    stop: CancellationToken,
) {
    let mut current = Some(first);
    let mut backoff = Duration::from_millis(50);
    loop {
        let mut ps = match current.take() {
            Some(ps) => ps,
            None => {
                // Answer requests while disconnected: the reconnection
                // subscribes to whatever the hub has by then.
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = tokio::time::sleep(backoff) => {}
                    Some(r) = requests.recv() => {
                        let _ = r.done.send(Err(BrokerError::Unavailable("redis is unreachable; reconnecting".into())));
                        continue;
                    }
                }
                match subscribe_all(&link, &inbound).await {
                    Ok(ps) => {
                        tracing::info!("redis pub/sub reconnected");
                        backoff = Duration::from_millis(50);
                        inbound.reconnected();
                        ps
                    }
                    Err(e) => {
                        backoff = (backoff * 2).min(Duration::from_secs(2));
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
                    let alive = tokio::time::timeout(link.io_timeout, ps.sink.ping::<String>()).await;
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
    fn passwords_are_redacted() {
        assert_eq!(super::redacted("redis://:pw@h:1/2"), "redis://***@h:1/2");
        assert_eq!(super::redacted("redis://h:1"), "redis://h:1");
    }
}
