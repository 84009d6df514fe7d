//! In-memory streams: a bounded window per channel (history_size,
//! history_ttl), forgotten after history_meta_ttl of inactivity. Appending
//! and delivering happen under the channel's shard lock, so concurrent
//! publishers cannot reorder a channel.
//!
//! Reading a stream that does not exist creates nothing: it is reported at
//! offset 0 in the epoch a stream created now would get. That epoch comes
//! from the store's random seed and the current period of the channel's
//! meta TTL, so it stays the same while the channel waits for its first
//! publication, and always changes for a stream created again after being
//! forgotten (it was idle a whole TTL, so at least one period passed since
//! it was created).

use std::collections::hash_map::DefaultHasher;
use std::collections::VecDeque;
use std::hash::{Hash, Hasher};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::future::BoxFuture;
use herald_protocol::Publication;
use tokio_util::sync::CancellationToken;

use super::{
    select, Deliver, HistoryPage, HistoryQuery, Store, StoreError, StreamOptions, StreamPosition,
};
use crate::sharded::Sharded;

/// How often idle streams are looked for.
const SWEEP_INTERVAL: Duration = Duration::from_secs(60);

struct Stream {
    epoch: Arc<str>,
    top: u64,
    pubs: VecDeque<(Instant, Arc<Publication>)>,
    touched: Instant,
}

impl Stream {
    fn new(epoch: Arc<str>, now: Instant) -> Self {
        Self {
            epoch,
            top: 0,
            pubs: VecDeque::new(),
            touched: now,
        }
    }

    fn trim(&mut self, opts: &StreamOptions, now: Instant) {
        while opts.size > 0 && self.pubs.len() > opts.size {
            self.pubs.pop_front();
        }
        if !opts.ttl.is_zero() {
            while self
                .pubs
                .front()
                .is_some_and(|(t, _)| now.duration_since(*t) > opts.ttl)
            {
                self.pubs.pop_front();
            }
        }
    }

    fn expired(&self, opts: &StreamOptions, now: Instant) -> bool {
        !opts.meta_ttl.is_zero() && now.duration_since(self.touched) > opts.meta_ttl
    }
}

pub struct MemoryStore {
    streams: Sharded<Arc<str>, Stream>,
    deliver: Deliver,
    /// Random for this store's life; with the time, makes new epochs.
    seed: u64,
    born: Instant,
}

impl MemoryStore {
    pub fn new(deliver: Deliver) -> Self {
        Self {
            streams: Sharded::default(),
            deliver,
            seed: uuid::Uuid::new_v4().as_u64_pair().0,
            born: Instant::now(),
        }
    }

    /// The epoch of a stream created at `now` (see the module doc).
    fn epoch_at(&self, now: Instant, opts: &StreamOptions) -> Arc<str> {
        let period = match opts.meta_ttl.as_nanos() {
            0 => 0,
            ttl => now.duration_since(self.born).as_nanos() / ttl,
        };
        let mut hasher = DefaultHasher::new();
        (self.seed, period).hash(&mut hasher);
        Arc::from(format!("{:016x}", hasher.finish()))
    }

    /// Forgets streams idle for longer than their meta TTL.
    pub fn sweep(&self, opts_for: impl Fn(&str) -> StreamOptions) {
        let now = Instant::now();
        self.streams.retain(|ch, s| !s.expired(&opts_for(ch), now));
    }

    /// Sweeps every minute until `stop`.
    pub async fn sweep_until(
        self: Arc<Self>,
        opts_for: impl Fn(&str) -> StreamOptions,
        stop: CancellationToken,
    ) {
        let mut tick = tokio::time::interval(SWEEP_INTERVAL);
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tick.tick() => self.sweep(&opts_for),
            }
        }
    }
}

impl Store for MemoryStore {
    fn append(
        &self,
        publication: Publication,
        opts: StreamOptions,
    ) -> BoxFuture<'_, Result<Arc<Publication>, StoreError>> {
        let now = Instant::now();
        let (stored, delivered) = {
            let mut shard = self.streams.write(&*publication.channel);
            let stream = match shard.get_mut(&*publication.channel) {
                Some(s) if !s.expired(&opts, now) => s,
                _ => {
                    let fresh = Stream::new(self.epoch_at(now, &opts), now);
                    shard.insert(publication.channel.clone(), fresh);
                    shard.get_mut(&*publication.channel).expect("just inserted")
                }
            };
            stream.top += 1;
            stream.touched = now;
            let stored = Arc::new(
                publication
                    .with_offset(stream.top)
                    .with_epoch(stream.epoch.clone()),
            );
            stream.pubs.push_back((now, stored.clone()));
            stream.trim(&opts, now);
            let delivered = (self.deliver)(stored.clone());
            (stored, delivered)
        };
        Box::pin(async move {
            delivered.await?;
            Ok(stored)
        })
    }

    fn history<'a>(
        &'a self,
        channel: &'a str,
        query: HistoryQuery,
        opts: StreamOptions,
    ) -> BoxFuture<'a, Result<HistoryPage, StoreError>> {
        let now = Instant::now();
        let result = {
            let mut shard = self.streams.write(channel);
            if shard.get(channel).is_some_and(|s| s.expired(&opts, now)) {
                shard.remove(channel);
            }
            let Some(stream) = shard.get_mut(channel) else {
                // Nothing is created: offset 0 in the epoch the first
                // publication will create the stream in.
                let position = StreamPosition {
                    offset: 0,
                    epoch: self.epoch_at(now, &opts).to_string(),
                };
                let page = select(&[], &position, &query).map(|publications| HistoryPage {
                    publications,
                    position,
                });
                return Box::pin(async move { page });
            };
            stream.touched = now;
            stream.trim(&opts, now);
            let position = StreamPosition {
                offset: stream.top,
                epoch: stream.epoch.to_string(),
            };
            let pubs: Vec<Arc<Publication>> = stream.pubs.iter().map(|(_, p)| p.clone()).collect();
            select(&pubs, &position, &query).map(|publications| HistoryPage {
                publications,
                position,
            })
        };
        Box::pin(async move { result })
    }

    fn remove<'a>(&'a self, channel: &'a str) -> BoxFuture<'a, Result<(), StoreError>> {
        if let Some(s) = self.streams.write(channel).get_mut(channel) {
            s.pubs.clear();
        }
        Box::pin(async { Ok(()) })
    }
}

#[cfg(test)]
mod tests;
