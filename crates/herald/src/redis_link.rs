//! Herald's connection to Redis, shared by the Redis broker, the streams it
//! keeps in Redis and the shared presence. Commands go through a
//! [`RedisLink`]: one bounded, ordered queue drained by one task that sends
//! whatever has piled up as one pipeline, so commands leave in the order
//! they were queued and each waits at most `io_timeout`. Several Redis
//! servers shard channels between them ([`RedisShards`]).

use std::sync::Arc;
use std::time::Duration;

use futures_util::future::BoxFuture;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{Cmd, Value};
use thiserror::Error;
use tokio::sync::{mpsc, oneshot};

use crate::config::{redacted_url, RedisConfig};

/// Commands queued for one Redis at most. Past it a command fails at once
/// (its caller gets [`RedisError::QueueFull`]) instead of memory growing
/// while Redis is slow.
const QUEUE_LIMIT: usize = 65_536;

/// Most commands sent in one pipeline.
const PIPELINE_MAX: usize = 256;

/// How long a link that failed answers every command with an error at once,
/// before it lets one pipeline try Redis again.
const DOWN_PROBE_INTERVAL: Duration = Duration::from_millis(250);

#[derive(Debug, Error, Clone)]
pub enum RedisError {
    #[error("cannot connect to Redis at {addr}")]
    Connect {
        addr: String,
        #[source]
        source: redis::RedisError,
    },
    #[error("connecting to Redis at {addr} timed out")]
    ConnectTimeout { addr: String },
    #[error("Redis command failed")]
    Command(#[source] redis::RedisError),
    #[error("Redis did not answer within {0:?}")]
    Timeout(Duration),
    #[error("Redis is unreachable (a recent command failed)")]
    Unreachable,
    #[error("too many commands queued for Redis")]
    QueueFull,
    #[error("the connection to Redis is closed")]
    Stopped,
    #[error("unexpected reply from Redis: {0}")]
    Reply(&'static str),
}

struct Job {
    cmd: Cmd,
    reply: oneshot::Sender<Result<Value, RedisError>>,
}

/// An ordered, pipelined command queue to one Redis.
#[derive(Clone)]
pub struct RedisLink {
    client: redis::Client,
    queue: mpsc::Sender<Job>,
    prefix: Arc<str>,
    io_timeout: Duration,
}

impl RedisLink {
    /// Connects to `url` (failing clearly when Redis cannot be reached) and
    /// starts the queue's task, which ends when every clone of the link is
    /// dropped.
    pub async fn connect(url: &str, cfg: &RedisConfig) -> Result<Self, RedisError> {
        let addr = redacted_url(url);
        let client = redis::Client::open(url).map_err(|source| RedisError::Connect {
            addr: addr.clone(),
            source,
        })?;
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
        .map_err(|_| RedisError::ConnectTimeout { addr: addr.clone() })?
        .map_err(|source| RedisError::Connect { addr, source })?;
        let (queue, jobs) = mpsc::channel(QUEUE_LIMIT);
        tokio::spawn(drain(conn, jobs, io_timeout));
        Ok(Self {
            client,
            queue,
            prefix: Arc::from(cfg.prefix.as_str()),
            io_timeout,
        })
    }

    /// Queues a command now (so commands keep the order of the calls); the
    /// future resolves with its reply.
    pub fn send(&self, cmd: Cmd) -> BoxFuture<'static, Result<Value, RedisError>> {
        let (reply, answer) = oneshot::channel();
        let queued = self.queue.try_send(Job { cmd, reply });
        Box::pin(async move {
            match queued {
                Ok(()) => {}
                Err(mpsc::error::TrySendError::Full(_)) => return Err(RedisError::QueueFull),
                Err(mpsc::error::TrySendError::Closed(_)) => return Err(RedisError::Stopped),
            }
            answer.await.map_err(|_| RedisError::Stopped)?
        })
    }

    /// The client, for connections of their own (pub/sub).
    pub fn client(&self) -> &redis::Client {
        &self.client
    }

    pub fn io_timeout(&self) -> Duration {
        self.io_timeout
    }

    /// A key or channel name under the configured prefix.
    pub fn key(&self, kind: &str, name: &str) -> String {
        format!("{}.{kind}.{name}", self.prefix)
    }

    /// The pub/sub channel of a Herald channel.
    pub fn channel_key(&self, channel: &str) -> String {
        self.key("client", channel)
    }

    /// The pub/sub channel of control messages.
    pub fn control_key(&self) -> String {
        format!("{}.control", self.prefix)
    }
}

async fn drain(mut conn: ConnectionManager, mut jobs: mpsc::Receiver<Job>, io: Duration) {
    let mut batch = Vec::with_capacity(PIPELINE_MAX);
    // While Redis is failing, commands fail at once instead of each batch
    // waiting out the timeout, so nothing piles up.
    let mut down_until: Option<tokio::time::Instant> = None;
    while jobs.recv_many(&mut batch, PIPELINE_MAX).await > 0 {
        if down_until.is_some_and(|t| tokio::time::Instant::now() < t) {
            fail_all(
                batch.drain(..).map(|job| job.reply),
                RedisError::Unreachable,
            );
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
                    let _ = reply.send(value.extract_error().map_err(RedisError::Command));
                }
            }
            Ok(Err(e)) => fail_all(replies, RedisError::Command(e)),
            Err(_) => fail_all(replies, RedisError::Timeout(io)),
        }
    }
}

fn fail_all(
    replies: impl IntoIterator<Item = oneshot::Sender<Result<Value, RedisError>>>,
    why: RedisError,
) {
    for reply in replies {
        let _ = reply.send(Err(why.clone()));
    }
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
    pub async fn connect(cfg: &RedisConfig) -> Result<Self, RedisError> {
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

    pub fn links(&self) -> &[RedisLink] {
        &self.links
    }
}

/// FNV-1a of the channel name: stable across processes, versions and
/// platforms, so every node puts a channel on the same shard.
pub fn shard_of(channel: &str, shards: usize) -> usize {
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

/// A number in a Redis reply.
pub fn as_u64(v: &Value) -> Option<u64> {
    match v {
        Value::Int(i) => u64::try_from(*i).ok(),
        Value::BulkString(b) => std::str::from_utf8(b).ok()?.parse().ok(),
        Value::SimpleString(s) => s.parse().ok(),
        _ => None,
    }
}

/// A string in a Redis reply.
pub fn as_string(v: &Value) -> Option<String> {
    match v {
        Value::BulkString(b) => String::from_utf8(b.clone()).ok(),
        Value::SimpleString(s) => Some(s.clone()),
        _ => None,
    }
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
}
