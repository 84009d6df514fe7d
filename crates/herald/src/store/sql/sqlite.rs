//! The SQLite side of durable streams: one database file, WAL journal.
//!
//! Durability: the journal is WAL with `synchronous=FULL`, so every commit
//! fsyncs the WAL before COMMIT returns and a publisher is acknowledged only
//! once its publication would survive an OS crash or power loss. With
//! `synchronous=NORMAL` a WAL commit is safe against the process being
//! killed (SIGKILL, panic) but the last commits before an OS crash or power
//! loss can be rolled back — which would break "acknowledged means stored".
//! FULL costs one fsync per commit, not per publication: group commit
//! spreads it over the whole batch, which keeps the throughput target
//! (see `durable_throughput_probe` in tests/durable.rs for the figures).

use std::path::Path;
use std::time::Duration;

use herald_protocol::Publication;
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use sqlx::{QueryBuilder, Sqlite, SqlitePool};

use super::rows::{NewRow, StoredRow};
use super::writer::{assign, counts};
use super::{Range, ROWS_PER_STATEMENT};
use crate::store::{new_epoch, StoreError};

/// Connections: the writer's plus readers for history (WAL lets readers run
/// beside the writer); a history read waits when all are busy.
const POOL_SIZE: u32 = 4;

/// How long a statement waits for SQLite's write lock (held by the writer or
/// by retention) before it fails with "database is locked".
const BUSY_TIMEOUT: Duration = Duration::from_secs(10);

/// Opens (creating if needed) the database file and applies migrations. An
/// unreadable or corrupt file is an error naming it, never a silent reset.
pub(super) async fn open(path: &Path) -> Result<SqlitePool, StoreError> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(|e| {
            StoreError::Backend(format!("cannot create directory {}: {e}", dir.display()))
        })?;
    }
    let options = SqliteConnectOptions::new()
        .filename(path)
        .create_if_missing(true)
        .journal_mode(SqliteJournalMode::Wal)
        .synchronous(SqliteSynchronous::Full)
        .busy_timeout(BUSY_TIMEOUT);
    let pool = SqlitePoolOptions::new()
        .max_connections(POOL_SIZE)
        .connect_with(options)
        .await
        .map_err(|e| {
            StoreError::Backend(format!(
                "cannot open SQLite database {}: {e}",
                path.display()
            ))
        })?;
    sqlx::migrate!("migrations/sqlite")
        .run(&pool)
        .await
        .map_err(|e| {
            StoreError::Backend(format!(
                "cannot migrate SQLite database {}: {e}",
                path.display()
            ))
        })?;
    Ok(pool)
}

/// Reserves offsets for the batch and inserts it, in one transaction.
pub(super) async fn commit(
    pool: &SqlitePool,
    pubs: &[Publication],
    now_ms: i64,
) -> Result<Vec<(u64, String)>, sqlx::Error> {
    let mut tx = pool.begin().await?;
    let counts: Vec<(&str, i64)> = counts(pubs).into_iter().collect();
    let mut tops = Vec::with_capacity(counts.len());
    for chunk in counts.chunks(ROWS_PER_STATEMENT) {
        let mut q =
            QueryBuilder::<Sqlite>::new("INSERT INTO streams (channel, epoch, top, created_at) ");
        q.push_values(chunk, |mut row, (channel, count)| {
            row.push_bind(*channel)
                .push_bind(new_epoch())
                .push_bind(*count)
                .push_bind(now_ms);
        });
        q.push(
            " ON CONFLICT (channel) DO UPDATE SET top = streams.top + excluded.top \
             RETURNING channel, epoch, top",
        );
        let rows: Vec<(String, String, i64)> = q.build_query_as().fetch_all(&mut *tx).await?;
        tops.extend(rows);
    }
    let assigned = assign(pubs, tops)?;
    let rows = pubs.iter().zip(&assigned);
    for chunk in rows.collect::<Vec<_>>().chunks(ROWS_PER_STATEMENT) {
        let mut q = QueryBuilder::<Sqlite>::new(
            "INSERT INTO publications \
             (channel, seq, data, info_user, info_client, conn_info, chan_info, tags, created_at) ",
        );
        q.push_values(chunk, |mut b, (p, (offset, _))| {
            let r = NewRow::new(p, *offset);
            b.push_bind(r.channel)
                .push_bind(r.seq)
                .push_bind(r.data)
                .push_bind(r.info_user)
                .push_bind(r.info_client)
                .push_bind(r.conn_info)
                .push_bind(r.chan_info)
                .push_bind(r.tags)
                .push_bind(now_ms);
        });
        q.build().execute(&mut *tx).await?;
    }
    tx.commit().await?;
    Ok(assigned)
}

const SELECT_POSITION: &str = "SELECT top, epoch FROM streams WHERE channel = ?";

pub(super) async fn position(
    pool: &SqlitePool,
    channel: &str,
    fresh: &str,
) -> Result<(i64, String), sqlx::Error> {
    let found = sqlx::query_as(SELECT_POSITION)
        .bind(channel)
        .fetch_optional(pool)
        .await?;
    if let Some(position) = found {
        return Ok(position);
    }
    sqlx::query(
        "INSERT INTO streams (channel, epoch, top, created_at) VALUES (?, ?, 0, ?) \
         ON CONFLICT (channel) DO NOTHING",
    )
    .bind(channel)
    .bind(fresh)
    .bind(super::now_ms())
    .execute(pool)
    .await?;
    sqlx::query_as(SELECT_POSITION)
        .bind(channel)
        .fetch_one(pool)
        .await
}

pub(super) async fn read(
    pool: &SqlitePool,
    channel: &str,
    range: &Range,
) -> Result<Vec<StoredRow>, sqlx::Error> {
    let sql = if range.reverse {
        "SELECT seq, data, info_user, info_client, conn_info, chan_info, tags FROM publications \
         WHERE channel = ? AND seq > ? AND seq < ? AND created_at >= ? ORDER BY seq DESC LIMIT ?"
    } else {
        "SELECT seq, data, info_user, info_client, conn_info, chan_info, tags FROM publications \
         WHERE channel = ? AND seq > ? AND seq < ? AND created_at >= ? ORDER BY seq LIMIT ?"
    };
    sqlx::query_as(sql)
        .bind(channel)
        .bind(range.after)
        .bind(range.before)
        .bind(range.since_ms)
        .bind(range.limit)
        .fetch_all(pool)
        .await
}

pub(super) async fn streams(pool: &SqlitePool) -> Result<Vec<(String, i64)>, sqlx::Error> {
    sqlx::query_as("SELECT channel, top FROM streams")
        .fetch_all(pool)
        .await
}

pub(super) async fn trim(
    pool: &SqlitePool,
    channel: &str,
    upto: i64,
    cutoff_ms: i64,
) -> Result<u64, sqlx::Error> {
    let done =
        sqlx::query("DELETE FROM publications WHERE channel = ? AND (seq <= ? OR created_at < ?)")
            .bind(channel)
            .bind(upto)
            .bind(cutoff_ms)
            .execute(pool)
            .await?;
    Ok(done.rows_affected())
}
