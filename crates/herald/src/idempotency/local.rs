//! Claims kept in this process: enough for one node. Keys whose window
//! ended are swept on the way, at most once a minute.

use std::time::Duration;

use futures_util::future::{self, BoxFuture};
use parking_lot::Mutex;
use tokio::time::Instant;

use super::{Claim, Claims};
use crate::broker::BrokerError;
use crate::sharded::Sharded;

#[derive(Debug, Clone, Copy)]
struct Entry {
    done: bool,
    until: Instant,
}

/// How often ended keys are swept.
const SWEEP_EVERY: Duration = Duration::from_secs(60);

/// Keys are `channel \0 key`: a channel name holds no control character.
pub struct LocalClaims {
    entries: Sharded<String, Entry>,
    swept: Mutex<Instant>,
}

impl Default for LocalClaims {
    fn default() -> Self {
        Self {
            entries: Sharded::default(),
            swept: Mutex::new(Instant::now()),
        }
    }
}

fn id(channel: &str, key: &str) -> String {
    format!("{channel}\0{key}")
}

impl LocalClaims {
    /// Forgets the keys whose window has ended.
    pub fn sweep(&self) {
        let now = Instant::now();
        *self.swept.lock() = now;
        self.entries.retain(|_, e| e.until > now);
    }

    /// Sweeps when the last sweep is a while ago.
    fn sweep_now_and_then(&self) {
        if self.swept.lock().elapsed() >= SWEEP_EVERY {
            self.sweep();
        }
    }
}

impl Claims for LocalClaims {
    fn claim<'a>(
        &'a self,
        channel: &'a str,
        key: &'a str,
        window: Duration,
    ) -> BoxFuture<'a, Result<Claim, BrokerError>> {
        self.sweep_now_and_then();
        let id = id(channel, key);
        let now = Instant::now();
        let mut shard = self.entries.write(&id);
        let claim = match shard.get(&id) {
            Some(e) if e.until > now && e.done => Claim::Done,
            Some(e) if e.until > now => Claim::Pending,
            _ => {
                let until = now + window;
                shard.insert(id, Entry { done: false, until });
                Claim::Mine
            }
        };
        Box::pin(future::ready(Ok(claim)))
    }

    fn done<'a>(
        &'a self,
        channel: &'a str,
        key: &'a str,
        window: Duration,
    ) -> BoxFuture<'a, Result<(), BrokerError>> {
        let id = id(channel, key);
        let until = Instant::now() + window;
        self.entries
            .write(&id)
            .insert(id, Entry { done: true, until });
        Box::pin(future::ready(Ok(())))
    }

    fn release<'a>(&'a self, channel: &'a str, key: &'a str) -> BoxFuture<'a, ()> {
        let id = id(channel, key);
        self.entries.write(&id).remove(&id);
        Box::pin(future::ready(()))
    }
}
