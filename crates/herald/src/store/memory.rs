//! In-memory streams: a bounded window per channel (history_size,
//! history_ttl), forgotten with a new epoch after history_meta_ttl of
//! inactivity. Appending and delivering happen under the channel's shard
//! lock, so concurrent publishers cannot reorder a channel.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::future::BoxFuture;
use herald_protocol::Publication;
use tokio_util::sync::CancellationToken;

use super::{
    new_epoch, select, Deliver, HistoryPage, HistoryQuery, Store, StoreError, StreamOptions,
    StreamPosition,
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
    fn new() -> Self {
        Self {
            epoch: Arc::from(new_epoch()),
            top: 0,
            pubs: VecDeque::new(),
            touched: Instant::now(),
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
}

impl MemoryStore {
    pub fn new(deliver: Deliver) -> Self {
        Self {
            streams: Sharded::default(),
            deliver,
        }
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
                    shard.insert(publication.channel.clone(), Stream::new());
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
            if shard.get(channel).is_none_or(|s| s.expired(&opts, now)) {
                // Reading creates the stream, so that its epoch is stable from
                // the first subscriber on.
                shard.insert(Arc::from(channel), Stream::new());
            }
            let stream = shard.get_mut(channel).expect("present");
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
