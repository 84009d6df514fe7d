//! Token buckets: the node's rate of new connections
//! (`client.connection_rate_limit`), each remote address's
//! (`client.connection_rate_limit_per_ip`) and each connection's commands
//! by kind (`client.command_rate_limit`). A bucket refills at its rate a
//! second and holds at most one second's worth, so a burst of `rate` passes
//! at once and the rate holds after it.

use std::hash::Hash;
use std::net::IpAddr;
use std::time::Duration;

use parking_lot::Mutex;
use tokio::time::Instant;

use crate::config::CommandRates;
use crate::sharded::Sharded;

/// A bucket of tokens.
#[derive(Debug, Clone, Copy)]
pub struct Bucket {
    tokens: f64,
    at: Instant,
}

impl Bucket {
    /// A full bucket of `rate` tokens.
    pub fn full(rate: u32, now: Instant) -> Self {
        Self {
            tokens: f64::from(rate),
            at: now,
        }
    }

    /// Takes a token when there is one, refilling first at `rate` a second.
    pub fn take(&mut self, rate: u32, now: Instant) -> bool {
        let rate = f64::from(rate);
        let refill = now.saturating_duration_since(self.at).as_secs_f64() * rate;
        self.tokens = (self.tokens + refill).min(rate);
        self.at = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }

    /// Whether the bucket has refilled to the brim (it can be forgotten).
    fn is_full(&self, rate: u32, now: Instant) -> bool {
        let refill = now.saturating_duration_since(self.at).as_secs_f64() * f64::from(rate);
        self.tokens + refill >= f64::from(rate)
    }
}

/// One bucket for the whole node; no limit at rate 0.
pub struct Limiter {
    rate: u32,
    bucket: Mutex<Bucket>,
}

impl Limiter {
    pub fn new(rate: u32) -> Self {
        Self {
            rate,
            bucket: Mutex::new(Bucket::full(rate, Instant::now())),
        }
    }

    pub fn allow(&self) -> bool {
        self.rate == 0 || self.bucket.lock().take(self.rate, Instant::now())
    }
}

/// How often full buckets are forgotten.
const SWEEP_EVERY: Duration = Duration::from_secs(30);

/// A bucket per key (a remote address); no limit at rate 0. Buckets that
/// refilled to the brim are forgotten now and then, so the map holds only
/// recent keys.
pub struct PerKey<K> {
    rate: u32,
    buckets: Sharded<K, Bucket>,
    swept: Mutex<Instant>,
}

impl<K: Hash + Eq> PerKey<K> {
    pub fn new(rate: u32) -> Self {
        Self {
            rate,
            buckets: Sharded::default(),
            swept: Mutex::new(Instant::now()),
        }
    }

    pub fn allow(&self, key: K) -> bool {
        if self.rate == 0 {
            return true;
        }
        let now = Instant::now();
        self.sweep_now_and_then(now);
        let mut shard = self.buckets.write(&key);
        shard
            .entry(key)
            .or_insert_with(|| Bucket::full(self.rate, now))
            .take(self.rate, now)
    }

    fn sweep_now_and_then(&self, now: Instant) {
        {
            let mut swept = self.swept.lock();
            if now.saturating_duration_since(*swept) < SWEEP_EVERY {
                return;
            }
            *swept = now;
        }
        let rate = self.rate;
        self.buckets.retain(|_, b| !b.is_full(rate, now));
    }

    /// Keys with a bucket now.
    pub fn len(&self) -> usize {
        self.buckets.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// The limits on new connections: the node's and each address's.
pub struct ConnectLimits {
    pub node: Limiter,
    pub per_ip: PerKey<IpAddr>,
}

/// Kinds of client commands limited apart.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Publish,
    Subscribe,
    History,
    Presence,
    Rpc,
}

/// One connection's command buckets, made when a limit is configured.
pub struct CommandLimits {
    rates: CommandRates,
    buckets: [Bucket; 5],
}

impl CommandLimits {
    /// `None` when no command kind is limited (nothing to keep).
    pub fn new(rates: &CommandRates) -> Option<Box<Self>> {
        let all = [
            rates.publish,
            rates.subscribe,
            rates.history,
            rates.presence,
            rates.rpc,
        ];
        if all.iter().all(|r| *r == 0) {
            return None;
        }
        let now = Instant::now();
        Some(Box::new(Self {
            rates: rates.clone(),
            buckets: all.map(|rate| Bucket::full(rate, now)),
        }))
    }

    /// Takes a token for a command of `kind`; false when its rate is
    /// exceeded.
    pub fn allow(&mut self, kind: Kind) -> bool {
        let (i, rate) = match kind {
            Kind::Publish => (0, self.rates.publish),
            Kind::Subscribe => (1, self.rates.subscribe),
            Kind::History => (2, self.rates.history),
            Kind::Presence => (3, self.rates.presence),
            Kind::Rpc => (4, self.rates.rpc),
        };
        rate == 0 || self.buckets[i].take(rate, Instant::now())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bucket_passes_a_burst_then_the_rate() {
        let t0 = Instant::now();
        let mut b = Bucket::full(10, t0);
        assert_eq!((0..15).filter(|_| b.take(10, t0)).count(), 10);
        // A tenth of a second later: one more token.
        let later = t0 + Duration::from_millis(100);
        assert!(b.take(10, later));
        assert!(!b.take(10, later));
        // Never more than a second's worth saved.
        let much_later = t0 + Duration::from_secs(3600);
        assert_eq!((0..15).filter(|_| b.take(10, much_later)).count(), 10);
    }

    #[test]
    fn keys_have_buckets_of_their_own_and_full_ones_go() {
        let limits: PerKey<u8> = PerKey::new(2);
        assert!(limits.allow(1) && limits.allow(1));
        assert!(!limits.allow(1));
        assert!(limits.allow(2));
        assert_eq!(limits.len(), 2);
        let off: PerKey<u8> = PerKey::new(0);
        assert!((0..1000).all(|_| off.allow(1)));
        assert!(off.is_empty());
    }
}
