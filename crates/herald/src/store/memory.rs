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
use std::collections::{HashMap, VecDeque};
use std::hash::{Hash, Hasher};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::future::BoxFuture;
use herald_protocol::Publication;
use tokio_util::sync::CancellationToken;

use super::{
    select, Conditions, Deliver, HistoryPage, HistoryQuery, Store, StoreError, StreamOptions,
    StreamPosition,
};
use crate::broker::BrokerError;
use crate::sharded::Sharded;

/// How often idle streams are looked for.
const SWEEP_INTERVAL: Duration = Duration::from_secs(60);

struct Stream {
    epoch: Arc<str>,
    top: u64,
    pubs: VecDeque<(Instant, Arc<Publication>)>,
    touched: Instant,
    /// Idempotency keys and the version, made on the first conditional
    /// append.
    conditional: Option<Box<Conditional>>,
}

/// What conditional appends keep of a stream.
#[derive(Default)]
struct Conditional {
    keys: Keys,
    version: u64,
    version_epoch: String,
}

/// The offsets idempotency keys were appended at, until their window ends.
#[derive(Default)]
struct Keys {
    /// Each key's offset and the end of its window.
    offsets: HashMap<Box<str>, (u64, Instant)>,
    /// The keys in the order they were kept, to forget them when their
    /// window ends (in this order, with one window for all).
    kept: VecDeque<Box<str>>,
}

impl Keys {
    /// The offset `key` was appended at, if its window has not ended.
    fn find(&mut self, key: &str, now: Instant) -> Option<u64> {
        while let Some(oldest) = self.kept.front() {
            match self.offsets.get(oldest) {
                Some((_, end)) if *end > now => break,
                _ => {
                    if let Some(gone) = self.kept.pop_front() {
                        self.offsets.remove(&gone);
                    }
                }
            }
        }
        match self.offsets.get(key) {
            Some((offset, end)) if *end > now => Some(*offset),
            _ => None,
        }
    }

    fn insert(&mut self, key: &str, offset: u64, end: Instant) {
        if self.offsets.insert(key.into(), (offset, end)).is_none() {
            self.kept.push_back(key.into());
        }
    }
}

impl Stream {
    fn new(epoch: Arc<str>, now: Instant) -> Self {
        Self {
            epoch,
            top: 0,
            pubs: VecDeque::new(),
            touched: now,
            conditional: None,
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

/// What an append did: the publication as stored and its delivery, or,
/// when its conditions did not hold, the position to answer with.
enum Appended {
    New(
        Arc<Publication>,
        BoxFuture<'static, Result<(), BrokerError>>,
    ),
    Not(StreamPosition),
}

impl MemoryStore {
    /// Appends under the channel's shard lock (see [`Store::append_if`]
    /// for `conditions`).
    fn append_at(
        &self,
        publication: Publication,
        opts: &StreamOptions,
        conditions: Option<&Conditions>,
    ) -> Appended {
        let now = Instant::now();
        let mut shard = self.streams.write(&*publication.channel);
        let stream = match shard.get_mut(&*publication.channel) {
            Some(s) if !s.expired(opts, now) => s,
            _ => {
                let fresh = Stream::new(self.epoch_at(now, opts), now);
                shard.insert(publication.channel.clone(), fresh);
                shard.get_mut(&*publication.channel).expect("just inserted")
            }
        };
        stream.touched = now;
        if let Some(conditions) = conditions {
            let kept = stream.conditional.get_or_insert_with(Box::default);
            if let Some(once) = &conditions.once {
                if let Some(offset) = kept.keys.find(&once.key, now) {
                    return Appended::Not(StreamPosition {
                        offset,
                        epoch: stream.epoch.to_string(),
                    });
                }
            }
            if let Some(v) = &conditions.version {
                if v.is_stale(kept.version, &kept.version_epoch) {
                    return Appended::Not(StreamPosition {
                        offset: stream.top,
                        epoch: stream.epoch.to_string(),
                    });
                }
                kept.version = v.version;
                kept.version_epoch.clone_from(&v.epoch);
            }
            if let Some(once) = &conditions.once {
                kept.keys
                    .insert(&once.key, stream.top + 1, now + once.window);
            }
        }
        stream.top += 1;
        let stored = Arc::new(
            publication
                .with_offset(stream.top)
                .with_epoch(stream.epoch.clone()),
        );
        stream.pubs.push_back((now, stored.clone()));
        stream.trim(opts, now);
        let delivered = (self.deliver)(stored.clone());
        Appended::New(stored, delivered)
    }
}

impl Store for MemoryStore {
    fn append(
        &self,
        publication: Publication,
        opts: StreamOptions,
    ) -> BoxFuture<'_, Result<Arc<Publication>, StoreError>> {
        let Appended::New(stored, delivered) = self.append_at(publication, &opts, None) else {
            unreachable!("only conditional appends can be refused");
        };
        Box::pin(async move {
            delivered.await?;
            Ok(stored)
        })
    }

    fn append_if(
        &self,
        publication: Publication,
        opts: StreamOptions,
        conditions: Conditions,
    ) -> BoxFuture<'_, Result<StreamPosition, StoreError>> {
        let appended = self.append_at(publication, &opts, Some(&conditions));
        Box::pin(async move {
            match appended {
                Appended::Not(position) => Ok(position),
                Appended::New(stored, delivered) => {
                    delivered.await?;
                    Ok(StreamPosition {
                        offset: stored.offset,
                        epoch: stored.epoch.as_deref().unwrap_or_default().to_owned(),
                    })
                }
            }
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
