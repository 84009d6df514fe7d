//! The SQLite side of durable streams: one database file, WAL journal.
//!
//! Durability (`storage.sqlite.synchronous`): the journal is WAL. With
//! `full` (the default) every commit fsyncs the WAL before COMMIT returns,
//! so an acknowledged publication survives an OS crash or power loss. With
//! `normal` a committed publication survives the process being killed
//! (SIGKILL, panic) but the last commits before an OS crash or power loss
//! can be rolled back; it saves the fsync per commit (see bench/RESULTS.md).
//! Either way it is one fsync per group commit, not per publication.

use std::path::Path;
use std::time::Duration;

use futures_util::future::BoxFuture;
use herald_protocol::Publication;
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteQueryResult,
    SqliteSynchronous,
};
use sqlx::{QueryBuilder, Sqlite, SqliteConnection};

use super::db::{Assigned, BatchKey, Dialect, Sql, Versioned};
use super::rows::NewRow;
use super::writer::{assign, back_offsets, counts};
use crate::config::Synchronous;
use crate::store::{StoreError, Version};

/// Most rows in one INSERT statement, so that a large
/// `storage.batch_max_size` stays under SQLite's bind-parameter limit
/// (32,766); a larger batch is inserted in several statements of one
/// transaction.
pub(super) const ROWS_PER_STATEMENT: usize = 1000;

/// Connections: the writer's plus readers for history (WAL lets readers run
/// beside the writer); a history read waits when all are busy.
const POOL_SIZE: u32 = 4;

/// Opens (creating if needed) the database file and applies migrations;
/// returns the readers' pool and the options the writer connects with. An
/// unreadable or corrupt file is an error naming it, never a silent reset.
/// A statement waits at most `timeout` (`storage.timeout`) for SQLite's
/// write lock (held by the writer or by retention) before it fails with
/// "database is locked".
pub(super) async fn open(
    path: &Path,
    synchronous: Synchronous,
    timeout: Duration,
) -> Result<Sql<SqliteDialect>, StoreError> {
    let target = || format!("SQLite database {}", path.display());
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(|e| StoreError::open(target(), e))?;
    }
    let options = SqliteConnectOptions::new()
        .filename(path)
        .create_if_missing(true)
        .journal_mode(SqliteJournalMode::Wal)
        .synchronous(match synchronous {
            Synchronous::Normal => SqliteSynchronous::Normal,
            Synchronous::Full => SqliteSynchronous::Full,
        })
        .busy_timeout(timeout)
        // Statement journals and other temporary data stay in memory: a
        // statement journal past 64 KiB (a batch of a few dozen
        // publications already) would otherwise go to a file made and
        // unlinked in a temporary directory (/var/tmp, /usr/tmp, /tmp or
        // the working directory), and such commits fail where none is
        // writable (a read-only root filesystem with only the data
        // directory mounted). A statement's journal holds at most one copy
        // of each page it changes, freed when it ends. (Sorts go to memory
        // too: a migration that indexes a large table would sort in RAM.)
        .pragma("temp_store", "memory");
    let pool = SqlitePoolOptions::new().max_connections(POOL_SIZE);
    Sql::open(
        pool,
        options,
        &sqlx::migrate!("migrations/sqlite"),
        &target(),
    )
    .await
}

/// SQLite's dialect: batches commit as one multi-statement query.
pub(super) struct SqliteDialect;

impl Dialect for SqliteDialect {
    type Db = Sqlite;

    fn commit<'a>(
        conn: &'a mut SqliteConnection,
        pubs: &'a [Publication],
        keys: &'a [BatchKey<'a>],
        now_ms: i64,
        epoch: &'a str,
    ) -> BoxFuture<'a, Result<Assigned, sqlx::Error>> {
        Box::pin(commit(conn, pubs, keys, now_ms, epoch))
    }

    fn commit_versioned<'a>(
        conn: &'a mut SqliteConnection,
        pubs: &'a [Publication],
        keys: &'a [BatchKey<'a>],
        version: &'a Version,
        now_ms: i64,
        epoch: &'a str,
    ) -> BoxFuture<'a, Result<Versioned, sqlx::Error>> {
        Box::pin(commit_versioned(conn, pubs, keys, version, now_ms, epoch))
    }

    fn rows_affected(result: &SqliteQueryResult) -> u64 {
        result.rows_affected()
    }

    // One node writes a SQLite file, one transaction at a time.
    const SHARED: bool = false;

    // A write takes the database's write lock at once (a deferred one that
    // upgrades could fail against a concurrent writer in WAL mode).
    const BEGIN_WRITE: &'static str = "BEGIN IMMEDIATE";

    fn lock_keys<'a>(
        _conn: &'a mut SqliteConnection,
        _keys: &'a [String],
    ) -> BoxFuture<'a, Result<(), sqlx::Error>> {
        Box::pin(async { Ok(()) })
    }
}

/// Reserves offsets for the batch and inserts it, in one transaction sent
/// as one multi-statement query: every statement is a round trip to the
/// connection's worker thread, and those round trips (thread wake-ups on a
/// busy machine) cost more than the statements themselves. Each row's
/// offset is computed in SQL from its stream's new top (see
/// [`back_offsets`]), so no statement needs the result of another.
///
/// Preparing the query costs about as much as running it, so its shape is
/// kept to a few cached ones: each VALUES list is padded with NULL rows
/// (skipped by `WHERE column1 IS NOT NULL`) to a power of two.
///
/// On failure the transaction is rolled back (and the caller drops the
/// connection).
async fn commit(
    conn: &mut SqliteConnection,
    pubs: &[Publication],
    keys: &[BatchKey<'_>],
    now_ms: i64,
    epoch: &str,
) -> Result<Assigned, sqlx::Error> {
    // BEGIN IMMEDIATE takes the write lock at once, so a concurrent writer
    // (retention) makes this wait (busy timeout) rather than fail midway.
    let mut q = QueryBuilder::<Sqlite>::new("BEGIN IMMEDIATE; ");
    push_batch(&mut q, pubs, keys, now_ms, epoch);
    q.push("COMMIT");
    let result = q
        .build_query_as::<(String, String, i64)>()
        .fetch_all(&mut *conn)
        .await;
    match result {
        Ok(tops) => assign(pubs, tops),
        Err(e) => {
            // Leave no transaction open when a statement before COMMIT
            // failed; this fails harmlessly when none is.
            let _ = sqlx::query("ROLLBACK").execute(&mut *conn).await;
            Err(e)
        }
    }
}

/// [`commit`] for one publication with a version: the write lock is taken
/// first, so the stream's version cannot change between the look and the
/// append.
async fn commit_versioned(
    conn: &mut SqliteConnection,
    pubs: &[Publication],
    keys: &[BatchKey<'_>],
    version: &Version,
    now_ms: i64,
    epoch: &str,
) -> Result<Versioned, sqlx::Error> {
    sqlx::query("BEGIN IMMEDIATE").execute(&mut *conn).await?;
    let result = async {
        let channel = pubs.first().map_or("", |p| &*p.channel);
        let last: Option<(i64, String, i64, String)> = sqlx::query_as(
            "SELECT version, version_epoch, top, epoch FROM streams WHERE channel = $1",
        )
        .bind(channel)
        .fetch_optional(&mut *conn)
        .await?;
        if let Some((last, last_epoch, top, stream_epoch)) = last {
            if version.is_stale(u64::try_from(last).unwrap_or(0), &last_epoch) {
                return Ok(Versioned::Stale(top, stream_epoch));
            }
        }
        let mut q = QueryBuilder::<Sqlite>::new("");
        push_batch(&mut q, pubs, keys, now_ms, epoch);
        q.push("UPDATE streams SET version = ");
        q.push_bind(i64::try_from(version.version).unwrap_or(i64::MAX));
        q.push(", version_epoch = ");
        q.push_bind(version.epoch.as_str());
        q.push(" WHERE channel = ");
        q.push_bind(channel);
        q.push("; ");
        let tops = q
            .build_query_as::<(String, String, i64)>()
            .fetch_all(&mut *conn)
            .await?;
        assign(pubs, tops).map(Versioned::Appended)
    }
    .await;
    let end = if result.is_ok() { "COMMIT" } else { "ROLLBACK" };
    let ended = sqlx::query(end).execute(&mut *conn).await;
    let versioned = result?;
    ended?;
    Ok(versioned)
}

/// Adds the statements that reserve offsets for the batch, insert it and
/// keep its keys. Each row's offset is computed in SQL from its stream's
/// new top (see [`back_offsets`]), so no statement needs the result of
/// another.
fn push_batch(
    q: &mut QueryBuilder<Sqlite>,
    pubs: &[Publication],
    keys: &[BatchKey<'_>],
    now_ms: i64,
    epoch: &str,
) {
    let counts = counts(pubs);
    let back = back_offsets(pubs, &counts);
    let counts: Vec<(&str, i64)> = counts.into_iter().collect();
    let keys: Vec<KeyRow<'_>> = keys
        .iter()
        .map(|k| KeyRow {
            channel: &pubs[k.index].channel,
            key: k.key,
            back: back[k.index],
            cutoff_ms: k.cutoff_ms,
        })
        .collect();
    let rows: Vec<_> = pubs.iter().map(NewRow::new).zip(back).collect();
    for chunk in counts.chunks(ROWS_PER_STATEMENT) {
        push_reserve(q, chunk, now_ms, epoch);
    }
    for chunk in rows.chunks(ROWS_PER_STATEMENT) {
        push_insert(q, chunk, now_ms);
    }
    for chunk in keys.chunks(ROWS_PER_STATEMENT) {
        push_keys(q, chunk, now_ms);
    }
}

/// Adds a statement that reserves `count` offsets in each stream of
/// `streams` (creating the stream in `epoch`) and returns its new top.
fn push_reserve(q: &mut QueryBuilder<Sqlite>, streams: &[(&str, i64)], now_ms: i64, epoch: &str) {
    q.push("INSERT INTO streams (channel, epoch, top, created_at) SELECT *, ");
    q.push_bind(now_ms);
    q.push(" FROM (");
    q.push_values(padded(streams), |mut row, stream| {
        let (channel, epoch, count) = match stream {
            Some((channel, count)) => (Some(*channel), Some(epoch.to_string()), Some(*count)),
            None => (None, None, None),
        };
        row.push_bind(channel).push_bind(epoch).push_bind(count);
    });
    q.push(
        ") WHERE column1 IS NOT NULL \
         ON CONFLICT (channel) DO UPDATE SET top = streams.top + excluded.top \
         RETURNING channel, epoch, top; ",
    );
}

/// Adds a statement that inserts `rows`, each at its stream's new top
/// minus its distance back from it.
fn push_insert(q: &mut QueryBuilder<Sqlite>, rows: &[(NewRow<'_>, i64)], now_ms: i64) {
    q.push(
        "INSERT INTO publications \
         (channel, seq, data, info_user, info_client, conn_info, chan_info, tags, created_at) \
         SELECT column1, (SELECT top FROM streams WHERE channel = column1) - column2, \
         column3, column4, column5, column6, column7, column8, ",
    );
    q.push_bind(now_ms);
    q.push(" FROM (");
    q.push_values(padded(rows), |mut b, row| {
        let (r, back) = match row {
            Some((r, back)) => (Some(r), Some(*back)),
            None => (None, None),
        };
        b.push_bind(r.map(|r| r.channel))
            .push_bind(back)
            .push_bind(r.map(|r| r.data))
            .push_bind(r.and_then(|r| r.info_user))
            .push_bind(r.and_then(|r| r.info_client))
            .push_bind(r.and_then(|r| r.conn_info))
            .push_bind(r.and_then(|r| r.chan_info))
            .push_bind(r.and_then(|r| r.tags.clone()));
    });
    q.push(") WHERE column1 IS NOT NULL; ");
}

/// An idempotency key as the commit keeps it.
struct KeyRow<'a> {
    channel: &'a str,
    key: &'a str,
    back: i64,
    cutoff_ms: i64,
}

/// Adds statements that keep `keys`: rows of the same channel and key
/// whose window has ended are deleted first; a live one makes the insert
/// fail with a unique violation, rolling the batch back.
fn push_keys(q: &mut QueryBuilder<Sqlite>, keys: &[KeyRow<'_>], now_ms: i64) {
    q.push("DELETE FROM idempotency WHERE EXISTS (SELECT 1 FROM (");
    q.push_values(padded(keys), |mut b, k| {
        b.push_bind(k.map(|k| k.channel))
            .push_bind(k.map(|k| k.key))
            .push_bind(k.map(|k| k.cutoff_ms));
    });
    q.push(
        ") WHERE column1 = idempotency.channel AND column2 = idempotency.key \
         AND idempotency.created_at < column3); \
         INSERT INTO idempotency (channel, key, seq, created_at) \
         SELECT column1, column2, (SELECT top FROM streams WHERE channel = column1) - column3, ",
    );
    q.push_bind(now_ms);
    q.push(" FROM (");
    q.push_values(padded(keys), |mut b, k| {
        b.push_bind(k.map(|k| k.channel))
            .push_bind(k.map(|k| k.key))
            .push_bind(k.map(|k| k.back));
    });
    q.push(") WHERE column1 IS NOT NULL; ");
}

/// `items` followed by `None`s up to the next power of two (at most
/// [`ROWS_PER_STATEMENT`]), so that statements come in few shapes.
pub(super) fn padded<T>(items: &[T]) -> impl Iterator<Item = Option<&T>> {
    let len = items.len().next_power_of_two().min(ROWS_PER_STATEMENT);
    items
        .iter()
        .map(Some)
        .chain(std::iter::repeat_with(|| None))
        .take(len.max(items.len()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn temporary_data_stays_in_memory() {
        let dir = tempfile::tempdir().unwrap();
        let sql = open(
            &dir.path().join("t.db"),
            Synchronous::Full,
            Duration::from_secs(10),
        )
        .await
        .unwrap();
        // 2 is MEMORY (0 would be the compile-time default: a file).
        let (store,): (i64,) = sqlx::query_as("PRAGMA temp_store")
            .fetch_one(sql.pool())
            .await
            .unwrap();
        assert_eq!(store, 2);
    }
}
