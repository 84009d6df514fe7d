//! Durable channel streams in SQL: SQLite (a file in the data directory) or
//! PostgreSQL. Appends go through one writer task that group-commits them:
//! it takes every publication queued so far (up to `storage.batch_max_size`)
//! and commits them in one transaction, then delivers them in offset order
//! and answers their publishers. A publisher is answered only after COMMIT,
//! and a failed transaction fails every publication in it, so an
//! acknowledged publication is never lost and an unacknowledged one is never
//! delivered. A retention task trims streams to their size and TTL.

mod postgres;
mod retention;
mod rows;
mod sqlite;
mod writer;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use futures_util::future::BoxFuture;
use herald_protocol::Publication;
use parking_lot::Mutex;
use sqlx::postgres::PgConnectOptions;
use sqlx::sqlite::SqliteConnectOptions;
use sqlx::{PgConnection, SqliteConnection};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::{
    new_epoch, Deliver, HistoryPage, HistoryQuery, Store, StoreError, StreamOptions, StreamPosition,
};
use crate::config::Storage;
use retention::Retention;
use rows::StoredRow;
use writer::{Pending, Writer};

/// The writer's queue holds this many batches; when it is full, `append`
/// waits for room, which slows publishers down to the commit rate.
const QUEUE_BATCHES: usize = 4;

/// Most rows in one SQLite INSERT statement, so that a large
/// `batch_max_size` stays under SQLite's bind-parameter limit (32,766); a
/// larger batch is inserted in several statements of one transaction.
/// (PostgreSQL takes a batch as arrays, whatever its size.)
const ROWS_PER_STATEMENT: usize = 1000;

/// Opens the durable store configured by `storage` (creating the SQLite
/// file under `data_dir` when needed), applies the schema migrations and
/// starts the writer and retention tasks. `deliver` receives each committed
/// publication in offset order; `opts_for` gives a channel's retention.
pub async fn open_durable(
    storage: &Storage,
    data_dir: &Path,
    deliver: Deliver,
    opts_for: Arc<dyn Fn(&str) -> StreamOptions + Send + Sync>,
) -> Result<DurableStore, StoreError> {
    let (db, connector) = match storage.kind.as_str() {
        "sqlite" => {
            let (pool, options) =
                sqlite::open(&sqlite_path(storage, data_dir), &storage.sqlite.synchronous).await?;
            (Db::Sqlite(pool), Connector::Sqlite(options))
        }
        "postgres" => {
            let (pool, options) = postgres::open(&storage.postgres).await?;
            (Db::Postgres(pool), Connector::Postgres(options))
        }
        other => {
            return Err(StoreError::Backend(format!(
                "unknown storage.type {other:?}; use \"sqlite\" or \"postgres\""
            )))
        }
    };
    let batch_max = storage.batch_max_size.max(1);
    let (queue, requests) = mpsc::channel(QUEUE_BATCHES * batch_max);
    let shutdown = CancellationToken::new();
    let removed = Arc::new(AtomicU64::new(0));
    let writer = Writer {
        connector,
        deliver,
        batch_max,
    };
    let retention = Retention {
        db: db.clone(),
        opts_for,
        every: storage.retention_interval.0,
        removed: removed.clone(),
    };
    let tasks = vec![
        tokio::spawn(writer.run(requests, shutdown.clone())),
        tokio::spawn(retention.run(shutdown.clone())),
    ];
    Ok(DurableStore {
        db,
        queue,
        removed,
        shutdown,
        tasks: Mutex::new(tasks),
    })
}

fn sqlite_path(storage: &Storage, data_dir: &Path) -> PathBuf {
    if storage.sqlite.path.is_empty() {
        data_dir.join("streams.db")
    } else {
        PathBuf::from(&storage.sqlite.path)
    }
}

/// Channel streams in SQLite or PostgreSQL (see the module doc).
pub struct DurableStore {
    db: Db,
    queue: mpsc::Sender<Pending>,
    removed: Arc<AtomicU64>,
    shutdown: CancellationToken,
    tasks: Mutex<Vec<JoinHandle<()>>>,
}

impl DurableStore {
    /// Commits and delivers what is queued, stops the writer and retention
    /// tasks and closes the database connections. Appends after this fail.
    pub async fn close(&self) {
        self.shutdown.cancel();
        let tasks = std::mem::take(&mut *self.tasks.lock());
        for task in tasks {
            let _ = task.await;
        }
        self.db.close().await;
    }

    /// Publications deleted by retention since open.
    pub fn removed_total(&self) -> u64 {
        self.removed.load(Ordering::Relaxed)
    }
}

impl Drop for DurableStore {
    fn drop(&mut self) {
        // The tasks' owner is gone: let them finish what is queued and stop.
        self.shutdown.cancel();
    }
}

fn closed() -> StoreError {
    StoreError::Backend("durable store is closed".into())
}

impl Store for DurableStore {
    fn append(
        &self,
        publication: Publication,
        _opts: StreamOptions,
    ) -> BoxFuture<'_, Result<Arc<Publication>, StoreError>> {
        // Retention is applied by the retention task and at read time, so
        // appending needs no options.
        Box::pin(async move {
            let (reply, answer) = oneshot::channel();
            self.queue
                .send(Pending { publication, reply })
                .await
                .map_err(|_| closed())?;
            let committed = answer.await.map_err(|_| closed())??;
            // Committed is acknowledged: a publication the broker could not
            // carry live is still in the stream, and subscribers recover it.
            if let Err(e) = committed.delivered.await {
                tracing::warn!(
                    channel = &*committed.publication.channel,
                    error = %e,
                    "committed publication not delivered live"
                );
            }
            Ok(committed.publication)
        })
    }

    fn history<'a>(
        &'a self,
        channel: &'a str,
        query: HistoryQuery,
        opts: StreamOptions,
    ) -> BoxFuture<'a, Result<HistoryPage, StoreError>> {
        Box::pin(async move {
            let (top, epoch) = self.db.position(channel, &new_epoch()).await?;
            let position = StreamPosition {
                offset: top as u64,
                epoch,
            };
            let Some(range) = Range::of(&query, &position, &opts)? else {
                return Ok(HistoryPage {
                    publications: Vec::new(),
                    position,
                });
            };
            let rows = self.db.read(channel, &range).await?;
            let channel: Arc<str> = Arc::from(channel);
            let publications = rows
                .into_iter()
                .map(|row| row.into_publication(&channel).map(Arc::new))
                .collect::<Result<_, _>>()?;
            Ok(HistoryPage {
                publications,
                position,
            })
        })
    }

    fn remove<'a>(&'a self, channel: &'a str) -> BoxFuture<'a, Result<(), StoreError>> {
        Box::pin(async move { self.db.remove(channel).await.map(|_| ()) })
    }
}

/// The databases a durable store can live in; pools are shared handles.
#[derive(Clone)]
enum Db {
    Sqlite(sqlx::SqlitePool),
    Postgres(sqlx::PgPool),
}

/// How the writer opens its own connection.
enum Connector {
    Sqlite(SqliteConnectOptions),
    Postgres(PgConnectOptions),
}

impl Connector {
    async fn connect(&self) -> Result<WriteConn, sqlx::Error> {
        Ok(match self {
            Connector::Sqlite(o) => WriteConn::Sqlite(sqlite::connect_writer(o).await?),
            Connector::Postgres(o) => WriteConn::Postgres(postgres::connect_writer(o).await?),
        })
    }
}

/// The writer's own connection, held for its life (and reopened after a
/// failed commit): taking one from the pool per batch would cost a ping
/// and a return trip each time.
enum WriteConn {
    Sqlite(SqliteConnection),
    Postgres(PgConnection),
}

impl WriteConn {
    /// Reserves offsets for `pubs` and inserts them, in one transaction;
    /// returns each publication's offset and epoch, in the input order.
    async fn commit(
        &mut self,
        pubs: &[Publication],
        now_ms: i64,
    ) -> Result<Vec<(u64, Arc<str>)>, sqlx::Error> {
        match self {
            WriteConn::Sqlite(conn) => sqlite::commit(conn, pubs, now_ms).await,
            WriteConn::Postgres(conn) => postgres::commit(conn, pubs, now_ms).await,
        }
    }
}

impl Db {
    /// The stream's top offset and epoch, creating the stream (with `fresh`
    /// as its epoch) when it does not exist yet.
    async fn position(&self, channel: &str, fresh: &str) -> Result<(i64, String), StoreError> {
        match self {
            Db::Sqlite(pool) => sqlite::position(pool, channel, fresh).await,
            Db::Postgres(pool) => postgres::position(pool, channel, fresh).await,
        }
        .map_err(|e| backend("history", e))
    }

    async fn read(&self, channel: &str, range: &Range) -> Result<Vec<StoredRow>, StoreError> {
        match self {
            Db::Sqlite(pool) => sqlite::read(pool, channel, range).await,
            Db::Postgres(pool) => postgres::read(pool, channel, range).await,
        }
        .map_err(|e| backend("history", e))
    }

    async fn remove(&self, channel: &str) -> Result<u64, StoreError> {
        self.trim(channel, i64::MAX, i64::MIN).await
    }

    /// Every stream with its top offset.
    async fn streams(&self) -> Result<Vec<(String, i64)>, StoreError> {
        match self {
            Db::Sqlite(pool) => sqlite::streams(pool).await,
            Db::Postgres(pool) => postgres::streams(pool).await,
        }
        .map_err(|e| backend("retention", e))
    }

    /// Deletes a channel's publications with an offset up to `upto` or
    /// created before `cutoff_ms`; returns how many.
    async fn trim(&self, channel: &str, upto: i64, cutoff_ms: i64) -> Result<u64, StoreError> {
        match self {
            Db::Sqlite(pool) => sqlite::trim(pool, channel, upto, cutoff_ms).await,
            Db::Postgres(pool) => postgres::trim(pool, channel, upto, cutoff_ms).await,
        }
        .map_err(|e| backend("delete", e))
    }

    async fn close(&self) {
        match self {
            Db::Sqlite(pool) => pool.close().await,
            Db::Postgres(pool) => pool.close().await,
        }
    }
}

fn backend(what: &str, e: sqlx::Error) -> StoreError {
    StoreError::Backend(format!("{what} failed: {e}"))
}

/// Which offsets a history read returns: strictly between `after` and
/// `before`, created at or after `since_ms`, at most `limit`, oldest first
/// unless `reverse`.
struct Range {
    after: i64,
    before: i64,
    since_ms: i64,
    limit: i64,
    reverse: bool,
}

impl Range {
    /// The rows `select` would return for `q`, with retention applied;
    /// `None` when no rows are wanted or possible.
    fn of(
        q: &HistoryQuery,
        position: &StreamPosition,
        opts: &StreamOptions,
    ) -> Result<Option<Range>, StoreError> {
        let Some(limit) = q.limit else {
            return Ok(None);
        };
        let since = match &q.since {
            Some(since) if since.epoch != position.epoch => return Err(StoreError::Unrecoverable),
            Some(since) => Some(to_i64(since.offset)),
            None => None,
        };
        let top = to_i64(position.offset);
        let floor = if opts.size > 0 {
            top.saturating_sub(to_i64(opts.size as u64))
        } else {
            0
        };
        let end = top.saturating_add(1);
        let (after, before) = if q.reverse {
            (floor, since.map_or(end, |s| s.min(end)))
        } else {
            (since.map_or(floor, |s| s.max(floor)), end)
        };
        if limit == 0 || after.saturating_add(1) >= before {
            return Ok(None);
        }
        Ok(Some(Range {
            after,
            before,
            since_ms: created_cutoff(opts),
            limit: to_i64(limit as u64),
            reverse: q.reverse,
        }))
    }
}

/// The oldest creation time a stream keeps, or `i64::MIN` without a TTL.
fn created_cutoff(opts: &StreamOptions) -> i64 {
    if opts.ttl.is_zero() {
        i64::MIN
    } else {
        now_ms().saturating_sub(to_i64(opts.ttl.as_millis().try_into().unwrap_or(u64::MAX)))
    }
}

fn to_i64(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

fn now_ms() -> i64 {
    let since_epoch = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    to_i64(since_epoch.as_millis().try_into().unwrap_or(u64::MAX))
}

#[cfg(test)]
mod tests;
