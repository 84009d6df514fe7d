//! Presence shared by the nodes of a cluster, in Redis: per channel a hash
//! client id → client info and a sorted set client id → expiry time. Each
//! node adds its own clients, removes them when they leave, and refreshes
//! them periodically, so the entries of a node that died expire on their
//! own. Reads drop expired entries first.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use futures_util::future::BoxFuture;
use herald_protocol::json::{decode_client_info, encode_client_info};
use herald_protocol::ClientInfo;
use redis::Value;

use super::{Members, PresenceError, SharedPresence};
use crate::redis_link::RedisShards;

/// KEYS: expiry set, data hash. ARGV: expires at, client, info, ttl.
const ADD: &str = r#"
redis.call('zadd', KEYS[1], ARGV[1], ARGV[2])
redis.call('hset', KEYS[2], ARGV[2], ARGV[3])
redis.call('expire', KEYS[1], ARGV[4])
redis.call('expire', KEYS[2], ARGV[4])
return 1
"#;

/// KEYS: expiry set, data hash. ARGV: client.
const REMOVE: &str = r#"
redis.call('zrem', KEYS[1], ARGV[1])
redis.call('hdel', KEYS[2], ARGV[1])
return 1
"#;

/// KEYS: expiry set, data hash. ARGV: now.
const GET: &str = r#"
local expired = redis.call('zrangebyscore', KEYS[1], '-inf', ARGV[1])
for i = 1, #expired, 1000 do
  redis.call('hdel', KEYS[2], unpack(expired, i, math.min(i + 999, #expired)))
end
if #expired > 0 then
  redis.call('zremrangebyscore', KEYS[1], '-inf', ARGV[1])
end
return redis.call('hgetall', KEYS[2])
"#;

/// A channel's presence lives on the channel's shard.
pub struct RedisPresence {
    shards: RedisShards,
    ttl: Duration,
}

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

impl RedisPresence {
    pub fn new(shards: RedisShards, ttl: Duration) -> Self {
        Self { shards, ttl }
    }

    fn keys(&self, channel: &str) -> (String, String) {
        let link = self.shards.for_channel(channel);
        (
            link.key("presence.expire", channel),
            link.key("presence.data", channel),
        )
    }

    fn script(&self, script: &str, channel: &str) -> redis::Cmd {
        let (expire, data) = self.keys(channel);
        let mut cmd = redis::cmd("EVAL");
        cmd.arg(script).arg(2).arg(expire).arg(data);
        cmd
    }
}

impl SharedPresence for RedisPresence {
    /// A PING to every shard.
    fn check(&self) -> BoxFuture<'_, Result<(), PresenceError>> {
        Box::pin(async move {
            let pings = self
                .shards
                .links()
                .iter()
                .map(|l| l.send(redis::cmd("PING")));
            for ping in futures_util::future::join_all(pings).await {
                ping?;
            }
            Ok(())
        })
    }

    fn add<'a>(
        &'a self,
        channel: &'a str,
        info: &'a ClientInfo,
    ) -> BoxFuture<'a, Result<(), PresenceError>> {
        let mut cmd = self.script(ADD, channel);
        cmd.arg(now_secs() + self.ttl.as_secs())
            .arg(&info.client)
            .arg(encode_client_info(info))
            .arg(self.ttl.as_secs().max(1));
        let sent = self.shards.for_channel(channel).send(cmd);
        Box::pin(async move {
            sent.await?;
            Ok(())
        })
    }

    fn remove<'a>(
        &'a self,
        channel: &'a str,
        client: &'a str,
    ) -> BoxFuture<'a, Result<(), PresenceError>> {
        let mut cmd = self.script(REMOVE, channel);
        cmd.arg(client);
        let sent = self.shards.for_channel(channel).send(cmd);
        Box::pin(async move {
            sent.await?;
            Ok(())
        })
    }

    fn get<'a>(&'a self, channel: &'a str) -> BoxFuture<'a, Result<Members, PresenceError>> {
        let mut cmd = self.script(GET, channel);
        cmd.arg(now_secs());
        let sent = self.shards.for_channel(channel).send(cmd);
        Box::pin(async move { Ok(members(channel, sent.await?)) })
    }

    fn refresh_interval(&self) -> Duration {
        self.ttl / 3
    }
}

/// The members in a reply to [`GET`] (a flat list or a map, by protocol
/// version); undecodable entries are skipped and logged.
fn members(channel: &str, reply: Value) -> Members {
    let mut out = Members::new();
    let items = match reply {
        Value::Array(items) => items,
        Value::Map(pairs) => pairs.into_iter().flat_map(|(k, v)| [k, v]).collect(),
        _ => Vec::new(),
    };
    for kv in items.chunks(2) {
        let (Some(Value::BulkString(client)), Some(Value::BulkString(info))) =
            (kv.first(), kv.get(1))
        else {
            continue;
        };
        match decode_client_info(info) {
            Ok(info) => {
                out.insert(String::from_utf8_lossy(client).into_owned(), Arc::new(info));
            }
            Err(e) => tracing::warn!(channel, error = %e, "undecodable presence entry"),
        }
    }
    out
}
