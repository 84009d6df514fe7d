//! Publishing at most once per channel and idempotency key within a window
//! (`channel.idempotency_window`), as Centrifugo's `idempotency_key` does:
//! a retry gets the first publish's result and publishes nothing.
//!
//! Where the channel keeps a stream, the key is kept with the stream, by
//! the store, in the same step as the append (so a durable stream still
//! knows it after a restart, and a retry never gets another offset). This
//! module serves channels without a stream, where the result is empty and
//! only "published already" matters: a [`Claims`] remembers each key for
//! the window — in this process on one node, in Redis or NATS's key-value
//! store for a cluster. A key is claimed before publishing and marked done
//! after; a publish that fails gives its claim back, so a retry then
//! publishes; one that arrives while the first is under way waits for it.

mod local;
mod nats;
mod redis;

use std::sync::Arc;
use std::time::Duration;

use futures_util::future::BoxFuture;

pub use local::LocalClaims;
pub use nats::NatsClaims;
pub use redis::RedisClaims;

use crate::broker::BrokerError;

/// How long a claim that is not done yet makes others wait before they
/// give up (a node that died mid-publish leaves its claim behind until the
/// window ends).
pub const PENDING_WAIT: Duration = Duration::from_secs(5);

/// What a claim attempt found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Claim {
    /// Claimed: publish, then [`Claims::done`] or [`Claims::release`].
    Mine,
    /// Published already within the window.
    Done,
    /// Another publish with this key is under way.
    Pending,
}

/// Where keys of publications without a stream are remembered.
pub trait Claims: Send + Sync + 'static {
    /// Claims `channel` + `key` for `window` when no one has.
    fn claim<'a>(
        &'a self,
        channel: &'a str,
        key: &'a str,
        window: Duration,
    ) -> BoxFuture<'a, Result<Claim, BrokerError>>;

    /// The publish under a claim went out: retries within the window
    /// publish nothing.
    fn done<'a>(
        &'a self,
        channel: &'a str,
        key: &'a str,
        window: Duration,
    ) -> BoxFuture<'a, Result<(), BrokerError>>;

    /// The publish under a claim failed: the key is free again.
    fn release<'a>(&'a self, channel: &'a str, key: &'a str) -> BoxFuture<'a, ()>;
}

/// Calls `publish` unless a publish with `key` went out into `channel`
/// within `window`; returns whether it did. A publish with the key under
/// way elsewhere is waited for (at most [`PENDING_WAIT`]).
pub async fn once<F, Fut>(
    claims: &dyn Claims,
    channel: &str,
    key: &str,
    window: Duration,
    publish: F,
) -> Result<bool, BrokerError>
where
    F: FnOnce() -> Fut,
    Fut: std::future::Future<Output = Result<(), BrokerError>>,
{
    let deadline = tokio::time::Instant::now() + PENDING_WAIT;
    loop {
        match claims.claim(channel, key, window).await? {
            Claim::Done => return Ok(false),
            Claim::Mine => break,
            Claim::Pending if tokio::time::Instant::now() >= deadline => {
                return Err(BrokerError::Timeout(PENDING_WAIT));
            }
            Claim::Pending => tokio::time::sleep(Duration::from_millis(20)).await,
        }
    }
    match publish().await {
        Ok(()) => {
            claims.done(channel, key, window).await?;
            Ok(true)
        }
        Err(e) => {
            claims.release(channel, key).await;
            Err(e)
        }
    }
}

/// A claims store shared by the node.
pub type SharedClaims = Arc<dyn Claims>;

#[cfg(test)]
mod tests;
