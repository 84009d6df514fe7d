//! The PostgreSQL side of durable streams. Several Herald nodes may share
//! one database: a batch reserves its offsets by incrementing each stream's
//! `top` in an upsert, which holds the stream row's lock until COMMIT, so
//! concurrent writers on the same channel queue behind each other and
//! offsets stay gap-free; a rolled-back batch gives its offsets back. Batches
//! lock streams in channel order, so two nodes cannot deadlock. Commits wait
//! for PostgreSQL's WAL flush (`synchronous_commit` as the server sets it,
//! `on` by default).

use std::time::Duration;

use herald_protocol::Publication;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{PgPool, Postgres, QueryBuilder};

use super::rows::{NewRow, StoredRow};
use super::writer::{assign, counts};
use super::{Range, ROWS_PER_STATEMENT};
use crate::config::PostgresStorage;
use crate::store::{new_epoch, StoreError};

/// How long an operation waits for a free connection of the pool
/// (`storage.postgres.pool_size`) before it fails.
const ACQUIRE_TIMEOUT: Duration = Duration::from_secs(10);

/// Connects the pool and applies migrations (under PostgreSQL's advisory
/// lock, so nodes starting together migrate once).
pub(super) async fn open(config: &PostgresStorage) -> Result<PgPool, StoreError> {
    let options: PgConnectOptions = config
        .url
        .parse()
        .map_err(|e| StoreError::Backend(format!("invalid storage.postgres.url: {e}")))?;
    // Name the server without the URL, which may hold a password.
    let server = format!(
        "{}:{}/{}",
        options.get_host(),
        options.get_port(),
        options.get_database().unwrap_or_default()
    );
    let pool = PgPoolOptions::new()
        .max_connections(config.pool_size.max(1))
        .acquire_timeout(ACQUIRE_TIMEOUT)
        .connect_with(options)
        .await
        .map_err(|e| StoreError::Backend(format!("cannot connect to PostgreSQL {server}: {e}")))?;
    sqlx::migrate!("migrations/postgres")
        .run(&pool)
        .await
        .map_err(|e| StoreError::Backend(format!("cannot migrate PostgreSQL {server}: {e}")))?;
    Ok(pool)
}

/// Reserves offsets for the batch and inserts it, in one transaction.
pub(super) async fn commit(
    pool: &PgPool,
    pubs: &[Publication],
    now_ms: i64,
) -> Result<Vec<(u64, String)>, sqlx::Error> {
    let mut tx = pool.begin().await?;
    let counts: Vec<(&str, i64)> = counts(pubs).into_iter().collect();
    let mut tops = Vec::with_capacity(counts.len());
    for chunk in counts.chunks(ROWS_PER_STATEMENT) {
        let mut q =
            QueryBuilder::<Postgres>::new("INSERT INTO streams (channel, epoch, top, created_at) ");
        q.push_values(chunk, |mut row, (channel, count)| {
            row.push_bind(*channel)
                .push_bind(new_epoch())
                .push_bind(*count)
                .push_bind(now_ms);
        });
        q.push(
            " ON CONFLICT (channel) DO UPDATE SET top = streams.top + EXCLUDED.top \
             RETURNING channel, epoch, top",
        );
        let rows: Vec<(String, String, i64)> = q.build_query_as().fetch_all(&mut *tx).await?;
        tops.extend(rows);
    }
    let assigned = assign(pubs, tops)?;
    let rows = pubs.iter().zip(&assigned);
    for chunk in rows.collect::<Vec<_>>().chunks(ROWS_PER_STATEMENT) {
        let mut q = QueryBuilder::<Postgres>::new(
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

const SELECT_POSITION: &str = "SELECT top, epoch FROM streams WHERE channel = $1";

pub(super) async fn position(
    pool: &PgPool,
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
        "INSERT INTO streams (channel, epoch, top, created_at) VALUES ($1, $2, 0, $3) \
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
    pool: &PgPool,
    channel: &str,
    range: &Range,
) -> Result<Vec<StoredRow>, sqlx::Error> {
    let sql = if range.reverse {
        "SELECT seq, data, info_user, info_client, conn_info, chan_info, tags FROM publications \
         WHERE channel = $1 AND seq > $2 AND seq < $3 AND created_at >= $4 ORDER BY seq DESC LIMIT $5"
    } else {
        "SELECT seq, data, info_user, info_client, conn_info, chan_info, tags FROM publications \
         WHERE channel = $1 AND seq > $2 AND seq < $3 AND created_at >= $4 ORDER BY seq LIMIT $5"
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

pub(super) async fn streams(pool: &PgPool) -> Result<Vec<(String, i64)>, sqlx::Error> {
    sqlx::query_as("SELECT channel, top FROM streams")
        .fetch_all(pool)
        .await
}

pub(super) async fn trim(
    pool: &PgPool,
    channel: &str,
    upto: i64,
    cutoff_ms: i64,
) -> Result<u64, sqlx::Error> {
    let done = sqlx::query(
        "DELETE FROM publications WHERE channel = $1 AND (seq <= $2 OR created_at < $3)",
    )
    .bind(channel)
    .bind(upto)
    .bind(cutoff_ms)
    .execute(pool)
    .await?;
    Ok(done.rows_affected())
}
