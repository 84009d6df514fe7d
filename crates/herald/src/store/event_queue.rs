//! What durable webhooks ask of storage: events written before they are
//! sent, claimed by one node at a time for delivery, retried or kept as
//! dead letters; and who holds which user's connections and which
//! channel's subscribers, so that "first anywhere" and "last gone" are
//! decided across the cluster.

use futures_util::future::BoxFuture;

use super::StoreError;

/// An event row to write: one event for one webhook.
#[derive(Debug, Clone)]
pub struct NewEvent {
    pub id: String,
    pub hook: String,
    pub event: String,
    /// The exact JSON body the receiver gets.
    pub body: String,
}

/// What kind of key a holder row is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum HolderKind {
    User,
    Channel,
    /// A user in a presence channel (Pusher's members).
    Member,
}

impl HolderKind {
    pub fn as_str(self) -> &'static str {
        match self {
            HolderKind::User => "user",
            HolderKind::Channel => "channel",
            HolderKind::Member => "member",
        }
    }

    /// The kind a row names; `None` for one this build does not know (a
    /// newer node's), which is left alone.
    pub fn of(s: &str) -> Option<Self> {
        match s {
            "user" => Some(HolderKind::User),
            "channel" => Some(HolderKind::Channel),
            "member" => Some(HolderKind::Member),
            _ => None,
        }
    }
}

/// One change to record, in order.
#[derive(Debug, Clone)]
pub enum Change {
    /// Events written as they are.
    Events(Vec<NewEvent>),
    /// This node now holds `key` (`add`), or no longer does; `events` are
    /// written only when that makes the key's first holder anywhere (or
    /// leaves it with none).
    Hold {
        kind: HolderKind,
        key: String,
        add: bool,
        events: Vec<NewEvent>,
    },
}

/// An event claimed for delivery.
#[derive(Debug, Clone)]
pub struct Claimed {
    pub id: String,
    pub hook: String,
    pub event: String,
    pub body: String,
    /// Attempts made before this one.
    pub attempts: i64,
}

/// How one delivery attempt ended.
#[derive(Debug, Clone)]
pub enum Settled {
    Delivered {
        id: String,
    },
    /// Try again at `next_at` (ms).
    Retry {
        id: String,
        next_at: i64,
        error: String,
    },
    /// The last attempt failed: keep it as a dead letter.
    Dead {
        id: String,
        error: String,
    },
}

/// A dead letter, as the server API lists it.
#[derive(Debug, Clone)]
pub struct DeadLetter {
    pub id: String,
    pub hook: String,
    pub event: String,
    pub body: String,
    pub attempts: i64,
    pub last_error: String,
    pub created_ms: i64,
}

/// Makes the events for a key a vanished node held, if it was the last.
pub type Orphaned<'a> = &'a (dyn Fn(HolderKind, &str, &str) -> Vec<NewEvent> + Sync);

pub trait EventQueue: Send + Sync + 'static {
    /// Records `changes` in one transaction (holders of the same key on
    /// other nodes are waited for, so exactly one node sees a first or
    /// last); returns how many events were written. Recording the same
    /// events again (by id) keeps them once.
    fn record<'a>(
        &'a self,
        node: &'a str,
        changes: &'a [Change],
        now_ms: i64,
    ) -> BoxFuture<'a, Result<usize, StoreError>>;

    /// Claims up to `limit` events due at `now_ms` for `node` until
    /// `until_ms` (no other node takes them meanwhile).
    fn claim<'a>(
        &'a self,
        node: &'a str,
        now_ms: i64,
        until_ms: i64,
        limit: i64,
    ) -> BoxFuture<'a, Result<Vec<Claimed>, StoreError>>;

    /// At start: releases claims no running node can hold (a node that
    /// has its database to itself holds none; shared ones lapse, or are
    /// released with their node by [`EventQueue::sweep`]).
    fn recover(&self) -> BoxFuture<'_, Result<(), StoreError>>;

    /// Records how `node`'s attempts ended (of events it still holds the
    /// claim of; another node may have taken one over).
    fn settle<'a>(
        &'a self,
        node: &'a str,
        outcomes: &'a [Settled],
    ) -> BoxFuture<'a, Result<(), StoreError>>;

    /// Dead letters, oldest first (of one webhook when `hook` is not empty).
    fn dead_letters<'a>(
        &'a self,
        hook: &'a str,
        limit: i64,
    ) -> BoxFuture<'a, Result<Vec<DeadLetter>, StoreError>>;

    /// Makes dead letters due again with their attempts reset: those of
    /// `ids`, or when `ids` is empty every one (of `hook` when not empty).
    fn redrive<'a>(
        &'a self,
        ids: &'a [String],
        hook: &'a str,
        now_ms: i64,
    ) -> BoxFuture<'a, Result<u64, StoreError>>;

    /// Events waiting for delivery, and dead letters.
    fn counts(&self) -> BoxFuture<'_, Result<(i64, i64), StoreError>>;

    /// Says the node is alive; `false` when storage did not know it (it is
    /// new, or others took it for gone and released what it held).
    fn heartbeat<'a>(
        &'a self,
        node: &'a str,
        now_ms: i64,
    ) -> BoxFuture<'a, Result<bool, StoreError>>;

    /// Releases what nodes unseen since `stale_ms` held (and their claims),
    /// writing at `now_ms` the events `orphaned` makes for keys left with no
    /// holder; returns how many nodes were released.
    fn sweep<'a>(
        &'a self,
        stale_ms: i64,
        now_ms: i64,
        orphaned: Orphaned<'a>,
    ) -> BoxFuture<'a, Result<usize, StoreError>>;

    /// At shutdown: releases what the node still holds (as a sweep would)
    /// and forgets it.
    fn leave<'a>(
        &'a self,
        node: &'a str,
        now_ms: i64,
        orphaned: Orphaned<'a>,
    ) -> BoxFuture<'a, Result<(), StoreError>>;
}
