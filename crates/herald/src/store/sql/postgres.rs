//! The PostgreSQL side of durable streams. Several Herald nodes may share
//! one database: a batch reserves its offsets by incrementing each stream's
//! `top` in an upsert, which holds the stream row's lock until COMMIT, so
//! concurrent writers on the same channel queue behind each other and
//! offsets stay gap-free; a rolled-back batch gives its offsets back. Batches
//! lock streams in channel order, so two nodes cannot deadlock. Commits wait
//! for PostgreSQL's WAL flush (`synchronous_commit` as the server sets it,
//! `on` by default).

use std::time::Duration;

use futures_util::future::BoxFuture;
use herald_protocol::Publication;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions, PgQueryResult};
use sqlx::{Connection, PgConnection, Postgres};

use super::db::{Assigned, BatchKey, Dialect, Sql, Versioned};
use super::rows::NewRow;
use super::writer::{assign, back_offsets, counts};
use crate::config::PostgresStorage;
use crate::store::{StoreError, Version};

/// Connects the pool and applies migrations (under PostgreSQL's advisory
/// lock, so nodes starting together migrate once); returns the pool and the
/// options the writer connects with. An operation waits at most `timeout`
/// (`storage.timeout`) for a free connection of the pool.
pub(super) async fn open(
    config: &PostgresStorage,
    timeout: Duration,
) -> Result<Sql<PostgresDialect>, StoreError> {
    let options: PgConnectOptions = config
        .url
        .expose()
        .parse()
        .map_err(|e| StoreError::open("PostgreSQL at storage.postgres.url", e))?;
    let target = format!("PostgreSQL {}", server_name(&options));
    let pool = PgPoolOptions::new()
        .max_connections(config.pool_size.max(1))
        .acquire_timeout(timeout);
    Sql::open(
        pool,
        options,
        &sqlx::migrate!("migrations/postgres"),
        &target,
    )
    .await
}

/// PostgreSQL's dialect: a batch commits as one statement over arrays.
pub(super) struct PostgresDialect;

impl Dialect for PostgresDialect {
    type Db = Postgres;

    fn commit<'a>(
        conn: &'a mut PgConnection,
        pubs: &'a [Publication],
        keys: &'a [BatchKey<'a>],
        now_ms: i64,
        epoch: &'a str,
    ) -> BoxFuture<'a, Result<Assigned, sqlx::Error>> {
        Box::pin(async move {
            if keys.is_empty() {
                return commit(conn, pubs, now_ms, epoch).await;
            }
            // Keys take statements of their own, so a batch that keeps any
            // is an explicit transaction (a few round trips, for these
            // batches only).
            let mut tx = conn.begin().await?;
            let assigned = commit(&mut tx, pubs, now_ms, epoch).await?;
            keep_keys(&mut tx, pubs, keys, now_ms).await?;
            tx.commit().await?;
            Ok(assigned)
        })
    }

    fn commit_versioned<'a>(
        conn: &'a mut PgConnection,
        pubs: &'a [Publication],
        keys: &'a [BatchKey<'a>],
        version: &'a Version,
        now_ms: i64,
        epoch: &'a str,
    ) -> BoxFuture<'a, Result<Versioned, sqlx::Error>> {
        Box::pin(async move {
            let channel = pubs.first().map_or("", |p| &*p.channel);
            let mut tx = conn.begin().await?;
            // The stream's row is made if needed and locked (until COMMIT)
            // before its version is read, so that two nodes cannot both
            // find their version newer.
            sqlx::query(
                "INSERT INTO streams (channel, epoch, top, created_at) VALUES ($1, $2, 0, $3) \
                 ON CONFLICT (channel) DO NOTHING",
            )
            .bind(channel)
            .bind(epoch)
            .bind(now_ms)
            .execute(&mut *tx)
            .await?;
            let (last, last_epoch, top, stream_epoch): (i64, String, i64, String) = sqlx::query_as(
                "SELECT version, version_epoch, top, epoch FROM streams \
                     WHERE channel = $1 FOR UPDATE",
            )
            .bind(channel)
            .fetch_one(&mut *tx)
            .await?;
            if version.is_stale(u64::try_from(last).unwrap_or(0), &last_epoch) {
                tx.commit().await?;
                return Ok(Versioned::Stale(top, stream_epoch));
            }
            let assigned = commit(&mut tx, pubs, now_ms, epoch).await?;
            if !keys.is_empty() {
                keep_keys(&mut tx, pubs, keys, now_ms).await?;
            }
            sqlx::query("UPDATE streams SET version = $1, version_epoch = $2 WHERE channel = $3")
                .bind(i64::try_from(version.version).unwrap_or(i64::MAX))
                .bind(version.epoch.as_str())
                .bind(channel)
                .execute(&mut *tx)
                .await?;
            tx.commit().await?;
            Ok(Versioned::Appended(assigned))
        })
    }

    fn rows_affected(result: &PgQueryResult) -> u64 {
        result.rows_affected()
    }

    const SHARED: bool = true;

    const BEGIN_WRITE: &'static str = "BEGIN";

    fn lock_keys<'a>(
        conn: &'a mut PgConnection,
        keys: &'a [String],
    ) -> BoxFuture<'a, Result<(), sqlx::Error>> {
        Box::pin(async move {
            if keys.is_empty() {
                return Ok(());
            }
            // Transaction-scoped advisory locks, taken in the keys' order.
            sqlx::query(
                "SELECT pg_advisory_xact_lock(hashtextextended(k, 0)) FROM \
                 (SELECT k FROM unnest($1::text[]) WITH ORDINALITY AS t(k, n) ORDER BY n) AS keys",
            )
            .bind(keys)
            .execute(conn)
            .await
            .map(|_| ())
        })
    }
}

/// The server, named without the URL, which may hold a password.
fn server_name(options: &PgConnectOptions) -> String {
    format!(
        "{}:{}/{}",
        options.get_host(),
        options.get_port(),
        options.get_database().unwrap_or_default()
    )
}

/// A whole batch in one statement, so in one round trip and one implicit
/// transaction: `tops` reserves offsets (the upsert locks the stream rows,
/// in channel order, until COMMIT), `pubs` inserts the rows with offsets
/// counted down from their stream's new top. The batch travels as arrays,
/// so the text never changes and the statement is prepared once.
const COMMIT_BATCH: &str = "\
WITH tops AS ( \
    INSERT INTO streams (channel, epoch, top, created_at) \
    SELECT s.channel, s.epoch, s.n, $12 \
    FROM unnest($9::text[], $10::text[], $11::bigint[]) AS s(channel, epoch, n) \
    ORDER BY s.channel \
    ON CONFLICT (channel) DO UPDATE SET top = streams.top + EXCLUDED.top \
    RETURNING channel, epoch, top \
), pubs AS ( \
    INSERT INTO publications \
        (channel, seq, data, info_user, info_client, conn_info, chan_info, tags, created_at) \
    SELECT r.channel, t.top - r.back, r.data, r.info_user, r.info_client, \
        r.conn_info, r.chan_info, r.tags, $12 \
    FROM unnest($1::text[], $2::bigint[], $3::bytea[], $4::text[], $5::text[], \
        $6::bytea[], $7::bytea[], $8::text[]) \
        AS r(channel, back, data, info_user, info_client, conn_info, chan_info, tags) \
    JOIN tops t ON t.channel = r.channel \
) \
SELECT channel, epoch, top FROM tops";

/// Deletes rows of the batch's keys whose window has ended (by their
/// cutoff), then inserts the keys: a live row for one fails the insert
/// with a unique violation, which rolls the batch back.
const FORGET_ENDED_KEYS: &str = "\
DELETE FROM idempotency i \
USING unnest($1::text[], $2::text[], $3::bigint[]) AS k(channel, key, cutoff) \
WHERE i.channel = k.channel AND i.key = k.key AND i.created_at < k.cutoff";

/// Each key at its publication's offset: the stream's top (already raised
/// by this transaction) minus the publication's distance back from it.
const KEEP_KEYS: &str = "\
INSERT INTO idempotency (channel, key, seq, created_at) \
SELECT k.channel, k.key, s.top - k.back, $4 \
FROM unnest($1::text[], $2::text[], $3::bigint[]) AS k(channel, key, back) \
JOIN streams s ON s.channel = k.channel";

async fn keep_keys(
    conn: &mut PgConnection,
    pubs: &[Publication],
    keys: &[BatchKey<'_>],
    now_ms: i64,
) -> Result<(), sqlx::Error> {
    let back = back_offsets(pubs, &counts(pubs));
    let channels: Vec<&str> = keys.iter().map(|k| &*pubs[k.index].channel).collect();
    let names: Vec<&str> = keys.iter().map(|k| k.key).collect();
    sqlx::query(FORGET_ENDED_KEYS)
        .bind(&channels)
        .bind(&names)
        .bind(keys.iter().map(|k| k.cutoff_ms).collect::<Vec<_>>())
        .execute(&mut *conn)
        .await?;
    sqlx::query(KEEP_KEYS)
        .bind(&channels)
        .bind(&names)
        .bind(keys.iter().map(|k| back[k.index]).collect::<Vec<_>>())
        .bind(now_ms)
        .execute(&mut *conn)
        .await?;
    Ok(())
}

/// Reserves offsets for the batch and inserts it, in one statement (see
/// [`COMMIT_BATCH`]); it commits when the statement completes, after
/// PostgreSQL has flushed its WAL.
async fn commit(
    conn: &mut PgConnection,
    pubs: &[Publication],
    now_ms: i64,
    epoch: &str,
) -> Result<Assigned, sqlx::Error> {
    let counts = counts(pubs);
    let back = back_offsets(pubs, &counts);
    let rows: Vec<NewRow<'_>> = pubs.iter().map(NewRow::new).collect();
    let tops: Vec<(String, String, i64)> = sqlx::query_as(COMMIT_BATCH)
        .bind(rows.iter().map(|r| r.channel).collect::<Vec<_>>())
        .bind(back)
        .bind(rows.iter().map(|r| r.data).collect::<Vec<_>>())
        .bind(rows.iter().map(|r| r.info_user).collect::<Vec<_>>())
        .bind(rows.iter().map(|r| r.info_client).collect::<Vec<_>>())
        .bind(rows.iter().map(|r| r.conn_info).collect::<Vec<_>>())
        .bind(rows.iter().map(|r| r.chan_info).collect::<Vec<_>>())
        .bind(rows.iter().map(|r| r.tags.as_deref()).collect::<Vec<_>>())
        .bind(counts.keys().copied().collect::<Vec<_>>())
        .bind(counts.keys().map(|_| epoch).collect::<Vec<_>>())
        .bind(counts.values().copied().collect::<Vec<_>>())
        .bind(now_ms)
        .fetch_all(&mut *conn)
        .await?;
    assign(pubs, tops)
}
