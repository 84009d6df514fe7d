//! Claims kept in Redis, on the channel's shard, so that every node of a
//! Redis-brokered cluster sees them. Each key expires with its window.

use std::time::Duration;

use futures_util::future::BoxFuture;
use redis::Value;

use super::{Claim, Claims};
use crate::broker::BrokerError;
use crate::redis_link::{as_string, RedisError, RedisShards};

/// KEYS: the claim. ARGV: window (ms). Claims the key when it is free;
/// returns "mine", or what the key holds ("pending" or "done").
const CLAIM: &str = r#"
local held = redis.call('get', KEYS[1])
if held then return held end
redis.call('set', KEYS[1], 'pending', 'PX', ARGV[1])
return 'mine'
"#;

pub struct RedisClaims {
    shards: RedisShards,
}

impl RedisClaims {
    pub fn new(shards: RedisShards) -> Self {
        Self { shards }
    }

    fn key(&self, channel: &str, key: &str) -> String {
        let link = self.shards.for_channel(channel);
        link.key("claim", &format!("{channel}\0{key}"))
    }
}

fn millis(window: Duration) -> u64 {
    u64::try_from(window.as_millis()).unwrap_or(u64::MAX).max(1)
}

impl Claims for RedisClaims {
    fn claim<'a>(
        &'a self,
        channel: &'a str,
        key: &'a str,
        window: Duration,
    ) -> BoxFuture<'a, Result<Claim, BrokerError>> {
        let mut cmd = redis::cmd("EVAL");
        cmd.arg(CLAIM)
            .arg(1)
            .arg(self.key(channel, key))
            .arg(millis(window));
        let sent = self.shards.for_channel(channel).send(cmd);
        Box::pin(async move {
            let reply: Value = sent.await?;
            match as_string(&reply).as_deref() {
                Some("mine") => Ok(Claim::Mine),
                Some("done") => Ok(Claim::Done),
                Some("pending") => Ok(Claim::Pending),
                _ => Err(RedisError::Reply("claim script").into()),
            }
        })
    }

    fn done<'a>(
        &'a self,
        channel: &'a str,
        key: &'a str,
        window: Duration,
    ) -> BoxFuture<'a, Result<(), BrokerError>> {
        let mut cmd = redis::cmd("SET");
        cmd.arg(self.key(channel, key))
            .arg("done")
            .arg("PX")
            .arg(millis(window));
        let sent = self.shards.for_channel(channel).send(cmd);
        Box::pin(async move {
            sent.await?;
            Ok(())
        })
    }

    fn release<'a>(&'a self, channel: &'a str, key: &'a str) -> BoxFuture<'a, ()> {
        let mut cmd = redis::cmd("DEL");
        cmd.arg(self.key(channel, key));
        let sent = self.shards.for_channel(channel).send(cmd);
        Box::pin(async move {
            // A claim left behind expires with its window.
            let _ = sent.await;
        })
    }
}
