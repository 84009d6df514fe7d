//! Every call to the database bounded in time (`storage.timeout`). A
//! database that stops answering — a network path that drops packets, a
//! server stopped or out of connections — would otherwise hold a publisher,
//! a history read or the writer until the operating system gives the
//! connection up (many minutes): past the limit the call fails as an I/O
//! error, and the writer drops its connection (a failed commit always
//! does) and opens a new one for its next batch. A pooled connection whose
//! query was abandoned goes back to the pool only once the database
//! answers it (sqlx checks it on release). The webhook event queue kept in
//! the same database is bounded alike (its callers try again).

use std::sync::Arc;
use std::time::Duration;

use futures_util::future::BoxFuture;
use herald_protocol::Publication;

use super::db::{AccessRow, Assigned, BatchKey, BatchWriter, Db, Versioned};
use super::rows::StoredRow;
use super::Range;
use crate::store::event_queue::{Change, Claimed, DeadLetter, EventQueue, Orphaned, Settled};
use crate::store::{StoreError, Version};

/// A database whose every call ends within `limit`.
pub(super) struct Bounded {
    pub(super) db: Arc<dyn Db>,
    pub(super) limit: Duration,
}

/// A webhook event queue whose every call ends within `limit`.
pub(super) struct BoundedEvents {
    pub(super) events: Arc<dyn EventQueue>,
    pub(super) limit: Duration,
}

/// The writer's connection, each commit ending within `limit`.
struct BoundedWriter {
    inner: Box<dyn BatchWriter>,
    limit: Duration,
}

/// An error that says a call got no answer within a limit.
trait Late {
    fn late(limit: Duration) -> Self;
}

impl Late for sqlx::Error {
    fn late(limit: Duration) -> Self {
        sqlx::Error::Io(std::io::Error::new(
            std::io::ErrorKind::TimedOut,
            format!("the database did not answer within {limit:?} (storage.timeout)"),
        ))
    }
}

impl Late for StoreError {
    fn late(limit: Duration) -> Self {
        StoreError::Sql {
            what: "a webhook queue call",
            source: sqlx::Error::late(limit),
        }
    }
}

/// `call`'s result, or its error type's [`Late`] once `limit` has passed.
async fn within<T, E: Late>(
    limit: Duration,
    call: impl std::future::Future<Output = Result<T, E>>,
) -> Result<T, E> {
    match tokio::time::timeout(limit, call).await {
        Ok(result) => result,
        Err(_) => Err(E::late(limit)),
    }
}

impl Db for Bounded {
    fn position<'a>(
        &'a self,
        channel: &'a str,
    ) -> BoxFuture<'a, Result<(i64, String), sqlx::Error>> {
        Box::pin(within(self.limit, self.db.position(channel)))
    }

    fn read<'a>(
        &'a self,
        channel: &'a str,
        range: &'a Range,
    ) -> BoxFuture<'a, Result<Vec<StoredRow>, sqlx::Error>> {
        Box::pin(within(self.limit, self.db.read(channel, range)))
    }

    fn find_key<'a>(
        &'a self,
        channel: &'a str,
        key: &'a str,
        since_ms: i64,
    ) -> BoxFuture<'a, Result<Option<(i64, String)>, sqlx::Error>> {
        Box::pin(within(self.limit, self.db.find_key(channel, key, since_ms)))
    }

    fn forget_keys(&self, before_ms: i64) -> BoxFuture<'_, Result<u64, sqlx::Error>> {
        Box::pin(within(self.limit, self.db.forget_keys(before_ms)))
    }

    fn streams(&self) -> BoxFuture<'_, Result<Vec<(String, i64)>, sqlx::Error>> {
        Box::pin(within(self.limit, self.db.streams()))
    }

    fn trim<'a>(
        &'a self,
        channel: &'a str,
        upto: i64,
        cutoff_ms: i64,
    ) -> BoxFuture<'a, Result<u64, sqlx::Error>> {
        Box::pin(within(self.limit, self.db.trim(channel, upto, cutoff_ms)))
    }

    fn ping(&self) -> BoxFuture<'_, Result<(), sqlx::Error>> {
        Box::pin(within(self.limit, self.db.ping()))
    }

    fn access_rules(&self, now: i64) -> BoxFuture<'_, Result<Vec<AccessRow>, sqlx::Error>> {
        Box::pin(within(self.limit, self.db.access_rules(now)))
    }

    fn put_access_rule<'a>(&'a self, row: &'a AccessRow) -> BoxFuture<'a, Result<(), sqlx::Error>> {
        Box::pin(within(self.limit, self.db.put_access_rule(row)))
    }

    fn delete_access_rule<'a>(
        &'a self,
        kind: &'a str,
        subject: &'a str,
    ) -> BoxFuture<'a, Result<(), sqlx::Error>> {
        Box::pin(within(
            self.limit,
            self.db.delete_access_rule(kind, subject),
        ))
    }

    fn connect_writer(&self) -> BoxFuture<'_, Result<Box<dyn BatchWriter>, sqlx::Error>> {
        Box::pin(async move {
            let inner = within(self.limit, self.db.connect_writer()).await?;
            Ok(Box::new(BoundedWriter {
                inner,
                limit: self.limit,
            }) as Box<dyn BatchWriter>)
        })
    }

    fn close(&self) -> BoxFuture<'_, ()> {
        Box::pin(async move {
            let _ = tokio::time::timeout(self.limit, self.db.close()).await;
        })
    }
}

impl BatchWriter for BoundedWriter {
    fn commit<'a>(
        &'a mut self,
        pubs: &'a [Publication],
        keys: &'a [BatchKey<'a>],
        now_ms: i64,
    ) -> BoxFuture<'a, Result<Assigned, sqlx::Error>> {
        Box::pin(within(self.limit, self.inner.commit(pubs, keys, now_ms)))
    }

    fn commit_versioned<'a>(
        &'a mut self,
        pubs: &'a [Publication],
        keys: &'a [BatchKey<'a>],
        version: &'a Version,
        now_ms: i64,
    ) -> BoxFuture<'a, Result<Versioned, sqlx::Error>> {
        let commit = self.inner.commit_versioned(pubs, keys, version, now_ms);
        Box::pin(within(self.limit, commit))
    }
}

impl EventQueue for BoundedEvents {
    fn record<'a>(
        &'a self,
        node: &'a str,
        changes: &'a [Change],
        now_ms: i64,
    ) -> BoxFuture<'a, Result<usize, StoreError>> {
        let call = self.events.record(node, changes, now_ms);
        Box::pin(within(self.limit, call))
    }

    fn claim<'a>(
        &'a self,
        node: &'a str,
        now_ms: i64,
        until_ms: i64,
        limit: i64,
    ) -> BoxFuture<'a, Result<Vec<Claimed>, StoreError>> {
        let call = self.events.claim(node, now_ms, until_ms, limit);
        Box::pin(within(self.limit, call))
    }

    fn recover(&self) -> BoxFuture<'_, Result<(), StoreError>> {
        Box::pin(within(self.limit, self.events.recover()))
    }

    fn settle<'a>(
        &'a self,
        node: &'a str,
        outcomes: &'a [Settled],
    ) -> BoxFuture<'a, Result<(), StoreError>> {
        Box::pin(within(self.limit, self.events.settle(node, outcomes)))
    }

    fn dead_letters<'a>(
        &'a self,
        hook: &'a str,
        limit: i64,
    ) -> BoxFuture<'a, Result<Vec<DeadLetter>, StoreError>> {
        Box::pin(within(self.limit, self.events.dead_letters(hook, limit)))
    }

    fn redrive<'a>(
        &'a self,
        ids: &'a [String],
        hook: &'a str,
        now_ms: i64,
    ) -> BoxFuture<'a, Result<u64, StoreError>> {
        let call = self.events.redrive(ids, hook, now_ms);
        Box::pin(within(self.limit, call))
    }

    fn counts(&self) -> BoxFuture<'_, Result<(i64, i64), StoreError>> {
        Box::pin(within(self.limit, self.events.counts()))
    }

    fn heartbeat<'a>(
        &'a self,
        node: &'a str,
        now_ms: i64,
    ) -> BoxFuture<'a, Result<bool, StoreError>> {
        Box::pin(within(self.limit, self.events.heartbeat(node, now_ms)))
    }

    fn sweep<'a>(
        &'a self,
        stale_ms: i64,
        now_ms: i64,
        orphaned: Orphaned<'a>,
    ) -> BoxFuture<'a, Result<usize, StoreError>> {
        let call = self.events.sweep(stale_ms, now_ms, orphaned);
        Box::pin(within(self.limit, call))
    }

    fn leave<'a>(
        &'a self,
        node: &'a str,
        now_ms: i64,
        orphaned: Orphaned<'a>,
    ) -> BoxFuture<'a, Result<(), StoreError>> {
        let call = self.events.leave(node, now_ms, orphaned);
        Box::pin(within(self.limit, call))
    }
}
