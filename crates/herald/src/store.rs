//! Channel streams: each channel with history keeps an ordered stream of
//! publications with a position — an epoch (changes only when the stream is
//! reset or lost) and an offset that grows by one per publication. A store
//! also delivers what it appends, in offset order, through its [`Deliver`]
//! sink, so that subscribers see publications in the order the stream holds
//! them. Memory streams are bounded caches, in this process or in Redis;
//! durable ones live in SQL. Which store serves a namespace is decided in
//! one place, [`crate::engine`].

pub mod event_queue;
mod memory;
mod redis;
mod sql;

use std::sync::Arc;
use std::time::Duration;

use futures_util::future::BoxFuture;
use herald_protocol::json::DecodeError;
use herald_protocol::Publication;
use thiserror::Error;

pub use memory::MemoryStore;
pub use redis::RedisStore;
pub use sql::{open_durable, CommitMetrics, DurableStore};

use crate::broker::BrokerError;
use crate::redis_link::RedisError;
use crate::wire::control::AccessChange;

/// Where a stream stands.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StreamPosition {
    pub offset: u64,
    pub epoch: String,
}

/// Retention of one stream, from its namespace's options.
#[derive(Debug, Clone, Copy, Default)]
pub struct StreamOptions {
    /// Publications kept; 0 means unbounded (durable streams only).
    pub size: usize,
    /// How long a publication is kept; zero means forever (durable only).
    pub ttl: Duration,
    /// How long an idle stream's position is remembered (memory streams).
    pub meta_ttl: Duration,
}

/// Which publications a history read returns.
#[derive(Debug, Clone, Default)]
pub struct HistoryQuery {
    /// Only publications after this position; the epoch must match.
    pub since: Option<StreamPosition>,
    /// At most this many; `None` for none at all (only the position), as the
    /// protocol's history without a limit does.
    pub limit: Option<usize>,
    /// Newest first.
    pub reverse: bool,
}

#[derive(Debug, Clone, Default)]
pub struct HistoryPage {
    pub publications: Vec<Arc<Publication>>,
    pub position: StreamPosition,
}

#[derive(Debug, Error)]
pub enum StoreError {
    /// `since` names an epoch the stream no longer has.
    #[error("unrecoverable position")]
    Unrecoverable,
    #[error("cannot open {target}")]
    Open {
        /// What could not be opened (a file, a server), without secrets.
        target: String,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    #[error("{what} failed")]
    Sql {
        what: &'static str,
        #[source]
        source: sqlx::Error,
    },
    /// A batch failed to commit: every publication in it gets this.
    #[error("commit failed")]
    Commit(#[source] Arc<sqlx::Error>),
    #[error("corrupt tags in channel {channel} at offset {offset}")]
    Corrupt {
        channel: String,
        offset: i64,
        #[source]
        source: serde_json::Error,
    },
    #[error("undecodable publication in a stream")]
    Decode(#[from] DecodeError),
    #[error("the durable store is closed")]
    Closed,
    /// A durable publish got no answer within `storage.timeout`; it may
    /// still be committed.
    #[error("no commit within {0:?} (storage.timeout); the publication may still be stored")]
    TimedOut(std::time::Duration),
    /// The publication cannot be stored as it is (a client error).
    #[error("publication refused: {0}")]
    Invalid(&'static str),
    #[error("stream in Redis unavailable")]
    Redis(#[from] RedisError),
    #[error("publication not delivered")]
    Broker(#[from] BrokerError),
}

impl StoreError {
    pub(crate) fn open(
        target: impl Into<String>,
        source: impl Into<Box<dyn std::error::Error + Send + Sync>>,
    ) -> Self {
        Self::Open {
            target: target.into(),
            source: source.into(),
        }
    }
}

/// Hands an appended publication on (to the broker), in offset order. The
/// call itself must enqueue synchronously; the future reports the outcome.
pub type Deliver =
    Arc<dyn Fn(Arc<Publication>) -> BoxFuture<'static, Result<(), BrokerError>> + Send + Sync>;

/// The idempotency key of an append: a retry with the same key within
/// `window` appends nothing and gets the first append's position. The store
/// keeps the key with the stream, in the same step as the append.
#[derive(Debug, Clone)]
pub struct Once {
    pub key: String,
    pub window: Duration,
}

/// The version of what a publication carries (the server API's `version`
/// and `version_epoch`): a publication whose version is not above the
/// stream's last one, in the same version epoch (or with none), is not
/// appended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Version {
    pub version: u64,
    pub epoch: String,
}

impl Version {
    /// Whether a publication of this version is older than (or as old as)
    /// the stream's last, `last` and `last_epoch`.
    pub fn is_stale(&self, last: u64, last_epoch: &str) -> bool {
        (self.epoch.is_empty() || self.epoch == last_epoch) && self.version <= last
    }
}

/// What must hold for an append to happen (see [`Store::append_if`]).
#[derive(Debug, Clone, Default)]
pub struct Conditions {
    pub once: Option<Once>,
    pub version: Option<Version>,
}

pub trait Store: Send + Sync + 'static {
    /// Appends to the publication's channel stream, delivers it, and returns
    /// it with its offset and its stream's epoch set. For durable stores it
    /// returns only once the publication is committed.
    fn append(
        &self,
        publication: Publication,
        opts: StreamOptions,
    ) -> BoxFuture<'_, Result<Arc<Publication>, StoreError>>;

    /// [`Store::append`] unless an append with the same idempotency key went
    /// into the channel's stream within its window (then returns where that
    /// one stands), or the publication's version is stale (then returns
    /// where the stream stands); appends otherwise and returns where the
    /// publication stands. The checks and the append are one step.
    fn append_if(
        &self,
        publication: Publication,
        opts: StreamOptions,
        conditions: Conditions,
    ) -> BoxFuture<'_, Result<StreamPosition, StoreError>>;

    /// Reads a channel's stream.
    fn history<'a>(
        &'a self,
        channel: &'a str,
        query: HistoryQuery,
        opts: StreamOptions,
    ) -> BoxFuture<'a, Result<HistoryPage, StoreError>>;

    /// Removes a channel's publications, keeping its position.
    fn remove<'a>(&'a self, channel: &'a str) -> BoxFuture<'a, Result<(), StoreError>>;
}

/// Access rules (user blocks, token revocations) kept in durable storage.
pub trait AccessRules: Send + Sync + 'static {
    /// Every rule in force at `now` (Unix seconds); ended ones are deleted.
    fn load(&self, now: i64) -> BoxFuture<'_, Result<Vec<AccessChange>, StoreError>>;

    /// Keeps a change: a rule added or replaced, or (unblock) removed.
    fn save<'a>(&'a self, change: &'a AccessChange) -> BoxFuture<'a, Result<(), StoreError>>;
}

/// A fresh random epoch.
pub fn new_epoch() -> String {
    uuid::Uuid::new_v4().simple().to_string()[..8].to_string()
}

/// Applies a query to publications held in offset order (shared by stores
/// that keep a window in memory).
pub fn select(
    pubs: &[Arc<Publication>],
    position: &StreamPosition,
    q: &HistoryQuery,
) -> Result<Vec<Arc<Publication>>, StoreError> {
    let Some(limit) = q.limit else {
        return Ok(Vec::new());
    };
    let after = match &q.since {
        Some(since) if since.epoch != position.epoch => return Err(StoreError::Unrecoverable),
        Some(since) => since.offset,
        None if q.reverse => u64::MAX,
        None => 0,
    };
    let out: Vec<Arc<Publication>> = if q.reverse {
        pubs.iter()
            .rev()
            .filter(|p| p.offset < after)
            .take(limit)
            .cloned()
            .collect()
    } else {
        pubs.iter()
            .filter(|p| p.offset > after)
            .take(limit)
            .cloned()
            .collect()
    };
    Ok(out)
}
