//! One SQL layer over every dialect. The queries that read, trim and list
//! streams are written once here, generic over `sqlx::Database` (their
//! `$n` placeholders mean the same to SQLite and PostgreSQL); a dialect adds
//! only what really differs — how it opens and migrates, and how a batch is
//! committed in one round trip ([`Dialect`]). The durable store sees a
//! database as a [`Db`] and the writer's connection as a [`BatchWriter`].

use std::sync::Arc;

use futures_util::future::BoxFuture;
use herald_protocol::Publication;
use sqlx::migrate::{Migrate, Migrator};
use sqlx::pool::PoolOptions;
use sqlx::{ConnectOptions, Connection, Encode, Executor, FromRow, IntoArguments, Pool, Type};

use super::rows::StoredRow;
use super::Range;
use crate::store::{StoreError, Version};

/// A row of `access_rules`: kind, subject, channel, issued_before,
/// expire_at.
pub(super) type AccessRow = (String, String, String, i64, i64);

/// Each publication of a batch's offset and epoch, in the batch's order.
pub(super) type Assigned = Vec<(u64, Arc<str>)>;

/// An idempotency key kept with the publication at `index` of a batch. A
/// row for the same channel and key created before `cutoff_ms` (its window
/// has ended) is replaced; a newer one fails the commit with a unique
/// violation (see [`is_key_conflict`]).
pub(super) struct BatchKey<'a> {
    pub(super) index: usize,
    pub(super) key: &'a str,
    pub(super) cutoff_ms: i64,
}

/// What a versioned commit did.
pub(super) enum Versioned {
    Appended(Assigned),
    /// The version was stale: nothing was appended. The stream's top offset
    /// and epoch.
    Stale(i64, String),
}

/// Whether a commit failed because a key it was to keep is kept already
/// (by a publication committed since the key was looked up).
pub(super) fn is_key_conflict(e: &sqlx::Error) -> bool {
    matches!(e, sqlx::Error::Database(d) if d.kind() == sqlx::error::ErrorKind::UniqueViolation)
}

/// What a durable store asks of its database.
pub(super) trait Db: Send + Sync + 'static {
    /// The stream's top offset and epoch; for a stream that does not exist
    /// yet, offset 0 in the database's epoch, the one its first
    /// publication will create it in (nothing is written).
    fn position<'a>(
        &'a self,
        channel: &'a str,
    ) -> BoxFuture<'a, Result<(i64, String), sqlx::Error>>;

    /// A channel's publications in `range`.
    fn read<'a>(
        &'a self,
        channel: &'a str,
        range: &'a Range,
    ) -> BoxFuture<'a, Result<Vec<StoredRow>, sqlx::Error>>;

    /// The offset and epoch of the publication kept with `key` in
    /// `channel`, if it was created at or after `since_ms`.
    fn find_key<'a>(
        &'a self,
        channel: &'a str,
        key: &'a str,
        since_ms: i64,
    ) -> BoxFuture<'a, Result<Option<(i64, String)>, sqlx::Error>>;

    /// Deletes idempotency keys created before `before_ms`; returns how
    /// many.
    fn forget_keys(&self, before_ms: i64) -> BoxFuture<'_, Result<u64, sqlx::Error>>;

    /// Every stream with its top offset.
    fn streams(&self) -> BoxFuture<'_, Result<Vec<(String, i64)>, sqlx::Error>>;

    /// Deletes a channel's publications with an offset up to `upto` or
    /// created before `cutoff_ms`; returns how many.
    fn trim<'a>(
        &'a self,
        channel: &'a str,
        upto: i64,
        cutoff_ms: i64,
    ) -> BoxFuture<'a, Result<u64, sqlx::Error>>;

    /// A round trip to the database (for `/health`).
    fn ping(&self) -> BoxFuture<'_, Result<(), sqlx::Error>>;

    /// Every access rule in force at `now` (Unix seconds), after deleting
    /// the ended ones.
    fn access_rules(&self, now: i64) -> BoxFuture<'_, Result<Vec<AccessRow>, sqlx::Error>>;

    /// Adds or replaces an access rule.
    fn put_access_rule<'a>(&'a self, row: &'a AccessRow) -> BoxFuture<'a, Result<(), sqlx::Error>>;

    /// Deletes an access rule of `kind` and `subject` (any channel).
    fn delete_access_rule<'a>(
        &'a self,
        kind: &'a str,
        subject: &'a str,
    ) -> BoxFuture<'a, Result<(), sqlx::Error>>;

    /// A connection of the writer's own, outside the pool, so that reads
    /// never wait for it (and it never waits for a pooled connection).
    fn connect_writer(&self) -> BoxFuture<'_, Result<Box<dyn BatchWriter>, sqlx::Error>>;

    fn close(&self) -> BoxFuture<'_, ()>;
}

/// The writer's connection.
pub(super) trait BatchWriter: Send {
    /// Reserves offsets for `pubs` and inserts them with `keys` in one
    /// transaction (creating streams that do not exist in the database's
    /// epoch); returns each publication's offset and epoch, in the input
    /// order.
    fn commit<'a>(
        &'a mut self,
        pubs: &'a [Publication],
        keys: &'a [BatchKey<'a>],
        now_ms: i64,
    ) -> BoxFuture<'a, Result<Assigned, sqlx::Error>>;

    /// Commits `pubs` (one publication) with `keys` as [`BatchWriter::commit`]
    /// does, unless `version` is stale for its stream: the stream is locked
    /// while its version is compared and replaced.
    fn commit_versioned<'a>(
        &'a mut self,
        pubs: &'a [Publication],
        keys: &'a [BatchKey<'a>],
        version: &'a Version,
        now_ms: i64,
    ) -> BoxFuture<'a, Result<Versioned, sqlx::Error>>;
}

pub(super) type Conn<D> = <<D as Dialect>::Db as sqlx::Database>::Connection;

/// What differs between databases.
pub(super) trait Dialect: Send + Sync + 'static {
    type Db: sqlx::Database;

    /// See [`BatchWriter::commit`]; new streams start in `epoch`. One round
    /// trip where the database allows it.
    fn commit<'a>(
        conn: &'a mut Conn<Self>,
        pubs: &'a [Publication],
        keys: &'a [BatchKey<'a>],
        now_ms: i64,
        epoch: &'a str,
    ) -> BoxFuture<'a, Result<Assigned, sqlx::Error>>;

    /// See [`BatchWriter::commit_versioned`].
    fn commit_versioned<'a>(
        conn: &'a mut Conn<Self>,
        pubs: &'a [Publication],
        keys: &'a [BatchKey<'a>],
        version: &'a Version,
        now_ms: i64,
        epoch: &'a str,
    ) -> BoxFuture<'a, Result<Versioned, sqlx::Error>>;

    /// Rows a statement changed (sqlx has no common trait for it).
    fn rows_affected(result: &<Self::Db as sqlx::Database>::QueryResult) -> u64;

    /// Whether several nodes may share the database: claims then skip rows
    /// other transactions locked (and lock their own).
    const SHARED: bool;

    /// How a transaction that writes begins.
    const BEGIN_WRITE: &'static str;

    /// Takes a lock per key (sorted) until the transaction ends, where
    /// several nodes share the database.
    fn lock_keys<'a>(
        conn: &'a mut Conn<Self>,
        keys: &'a [String],
    ) -> BoxFuture<'a, Result<(), sqlx::Error>>;
}

/// A database of dialect `D`: a pool for reads and retention, and the
/// options the writer connects with.
pub(super) struct Sql<D: Dialect> {
    pool: Pool<D::Db>,
    writer: <Conn<D> as Connection>::Options,
    /// The database's epoch (see the `herald_meta` migration).
    epoch: Arc<str>,
}

impl<D: Dialect> Sql<D> {
    pub(super) fn pool(&self) -> &Pool<D::Db> {
        &self.pool
    }

    /// Connects a pool with `options`, applies `migrations` and keeps the
    /// options for the writer's own connection; errors name `target`.
    pub(super) async fn open(
        pool: PoolOptions<D::Db>,
        options: <Conn<D> as Connection>::Options,
        migrations: &Migrator,
        target: &str,
    ) -> Result<Self, StoreError>
    where
        Conn<D>: Migrate,
        for<'c> &'c mut Conn<D>: Executor<'c, Database = D::Db>,
        <D::Db as sqlx::Database>::Arguments: IntoArguments<D::Db>,
        for<'q> String: Encode<'q, D::Db> + Type<D::Db>,
        for<'r> (String,): FromRow<'r, <D::Db as sqlx::Database>::Row>,
    {
        let pool = pool
            .connect_with(options.clone())
            .await
            .map_err(|e| StoreError::open(target, e))?;
        migrations
            .run(&pool)
            .await
            .map_err(|e| StoreError::open(target, e))?;
        let epoch = database_epoch(&pool)
            .await
            .map_err(|e| StoreError::open(target, e))?;
        Ok(Self {
            pool,
            writer: options,
            epoch: Arc::from(epoch),
        })
    }
}

/// The database's epoch: made once, by whichever node opens it first.
async fn database_epoch<DB>(pool: &Pool<DB>) -> Result<String, sqlx::Error>
where
    DB: sqlx::Database,
    for<'c> &'c mut DB::Connection: Executor<'c, Database = DB>,
    DB::Arguments: IntoArguments<DB>,
    for<'q> String: Encode<'q, DB> + Type<DB>,
    for<'r> (String,): FromRow<'r, DB::Row>,
{
    sqlx::query(
        "INSERT INTO herald_meta (key, value) VALUES ('epoch', $1) ON CONFLICT (key) DO NOTHING",
    )
    .bind(crate::store::new_epoch())
    .execute(pool)
    .await?;
    let (epoch,): (String,) = sqlx::query_as("SELECT value FROM herald_meta WHERE key = 'epoch'")
        .fetch_one(pool)
        .await?;
    Ok(epoch)
}

struct Writer<D: Dialect> {
    conn: Conn<D>,
    epoch: Arc<str>,
}

impl<D: Dialect> BatchWriter for Writer<D> {
    fn commit<'a>(
        &'a mut self,
        pubs: &'a [Publication],
        keys: &'a [BatchKey<'a>],
        now_ms: i64,
    ) -> BoxFuture<'a, Result<Assigned, sqlx::Error>> {
        D::commit(&mut self.conn, pubs, keys, now_ms, &self.epoch)
    }

    fn commit_versioned<'a>(
        &'a mut self,
        pubs: &'a [Publication],
        keys: &'a [BatchKey<'a>],
        version: &'a Version,
        now_ms: i64,
    ) -> BoxFuture<'a, Result<Versioned, sqlx::Error>> {
        D::commit_versioned(&mut self.conn, pubs, keys, version, now_ms, &self.epoch)
    }
}

const SELECT_POSITION: &str = "SELECT top, epoch FROM streams WHERE channel = $1";

const READ_FORWARD: &str =
    "SELECT seq, data, info_user, info_client, conn_info, chan_info, tags FROM publications \
     WHERE channel = $1 AND seq > $2 AND seq < $3 AND created_at >= $4 ORDER BY seq LIMIT $5";

const READ_BACKWARD: &str =
    "SELECT seq, data, info_user, info_client, conn_info, chan_info, tags FROM publications \
     WHERE channel = $1 AND seq > $2 AND seq < $3 AND created_at >= $4 \
     ORDER BY seq DESC LIMIT $5";

const FIND_KEY: &str = "SELECT i.seq, s.epoch FROM idempotency i \
     JOIN streams s ON s.channel = i.channel \
     WHERE i.channel = $1 AND i.key = $2 AND i.created_at >= $3";

const FORGET_KEYS: &str = "DELETE FROM idempotency WHERE created_at < $1";

const FORGET_ACCESS_RULES: &str =
    "DELETE FROM access_rules WHERE expire_at <> 0 AND expire_at <= $1";

const SELECT_ACCESS_RULES: &str =
    "SELECT kind, subject, channel, issued_before, expire_at FROM access_rules";

const PUT_ACCESS_RULE: &str = "INSERT INTO access_rules \
     (kind, subject, channel, issued_before, expire_at) VALUES ($1, $2, $3, $4, $5) \
     ON CONFLICT (kind, subject, channel) \
     DO UPDATE SET issued_before = excluded.issued_before, expire_at = excluded.expire_at";

const DELETE_ACCESS_RULE: &str = "DELETE FROM access_rules WHERE kind = $1 AND subject = $2";

const TRIM: &str = "DELETE FROM publications WHERE channel = $1 AND (seq <= $2 OR created_at < $3)";

impl<D: Dialect> Db for Sql<D>
where
    for<'c> &'c mut Conn<D>: Executor<'c, Database = D::Db>,
    <D::Db as sqlx::Database>::Arguments: IntoArguments<D::Db>,
    for<'q> &'q str: Encode<'q, D::Db> + Type<D::Db>,
    for<'q> i64: Encode<'q, D::Db> + Type<D::Db>,
    for<'r> (i64, String): FromRow<'r, <D::Db as sqlx::Database>::Row>,
    for<'r> (String, i64): FromRow<'r, <D::Db as sqlx::Database>::Row>,
    for<'r> StoredRow: FromRow<'r, <D::Db as sqlx::Database>::Row>,
    for<'r> AccessRow: FromRow<'r, <D::Db as sqlx::Database>::Row>,
{
    fn position<'a>(
        &'a self,
        channel: &'a str,
    ) -> BoxFuture<'a, Result<(i64, String), sqlx::Error>> {
        Box::pin(async move {
            let found = sqlx::query_as(SELECT_POSITION)
                .bind(channel)
                .fetch_optional(&self.pool)
                .await?;
            Ok(found.unwrap_or_else(|| (0, self.epoch.to_string())))
        })
    }

    fn read<'a>(
        &'a self,
        channel: &'a str,
        range: &'a Range,
    ) -> BoxFuture<'a, Result<Vec<StoredRow>, sqlx::Error>> {
        let sql = if range.reverse {
            READ_BACKWARD
        } else {
            READ_FORWARD
        };
        Box::pin(
            sqlx::query_as(sql)
                .bind(channel)
                .bind(range.after)
                .bind(range.before)
                .bind(range.since_ms)
                .bind(range.limit)
                .fetch_all(&self.pool),
        )
    }

    fn find_key<'a>(
        &'a self,
        channel: &'a str,
        key: &'a str,
        since_ms: i64,
    ) -> BoxFuture<'a, Result<Option<(i64, String)>, sqlx::Error>> {
        Box::pin(
            sqlx::query_as(FIND_KEY)
                .bind(channel)
                .bind(key)
                .bind(since_ms)
                .fetch_optional(&self.pool),
        )
    }

    fn forget_keys(&self, before_ms: i64) -> BoxFuture<'_, Result<u64, sqlx::Error>> {
        Box::pin(async move {
            let done = sqlx::query(FORGET_KEYS)
                .bind(before_ms)
                .execute(&self.pool)
                .await?;
            Ok(D::rows_affected(&done))
        })
    }

    fn streams(&self) -> BoxFuture<'_, Result<Vec<(String, i64)>, sqlx::Error>> {
        Box::pin(sqlx::query_as("SELECT channel, top FROM streams").fetch_all(&self.pool))
    }

    fn trim<'a>(
        &'a self,
        channel: &'a str,
        upto: i64,
        cutoff_ms: i64,
    ) -> BoxFuture<'a, Result<u64, sqlx::Error>> {
        Box::pin(async move {
            let done = sqlx::query(TRIM)
                .bind(channel)
                .bind(upto)
                .bind(cutoff_ms)
                .execute(&self.pool)
                .await?;
            Ok(D::rows_affected(&done))
        })
    }

    fn ping(&self) -> BoxFuture<'_, Result<(), sqlx::Error>> {
        Box::pin(async move {
            sqlx::query("SELECT 1").execute(&self.pool).await?;
            Ok(())
        })
    }

    fn access_rules(&self, now: i64) -> BoxFuture<'_, Result<Vec<AccessRow>, sqlx::Error>> {
        Box::pin(async move {
            sqlx::query(FORGET_ACCESS_RULES)
                .bind(now)
                .execute(&self.pool)
                .await?;
            sqlx::query_as(SELECT_ACCESS_RULES)
                .fetch_all(&self.pool)
                .await
        })
    }

    fn put_access_rule<'a>(&'a self, row: &'a AccessRow) -> BoxFuture<'a, Result<(), sqlx::Error>> {
        Box::pin(async move {
            sqlx::query(PUT_ACCESS_RULE)
                .bind(row.0.as_str())
                .bind(row.1.as_str())
                .bind(row.2.as_str())
                .bind(row.3)
                .bind(row.4)
                .execute(&self.pool)
                .await?;
            Ok(())
        })
    }

    fn delete_access_rule<'a>(
        &'a self,
        kind: &'a str,
        subject: &'a str,
    ) -> BoxFuture<'a, Result<(), sqlx::Error>> {
        Box::pin(async move {
            sqlx::query(DELETE_ACCESS_RULE)
                .bind(kind)
                .bind(subject)
                .execute(&self.pool)
                .await?;
            Ok(())
        })
    }

    fn connect_writer(&self) -> BoxFuture<'_, Result<Box<dyn BatchWriter>, sqlx::Error>> {
        Box::pin(async move {
            let conn = self.writer.connect().await?;
            let writer = Writer::<D> {
                conn,
                epoch: self.epoch.clone(),
            };
            Ok(Box::new(writer) as Box<dyn BatchWriter>)
        })
    }

    fn close(&self) -> BoxFuture<'_, ()> {
        Box::pin(self.pool.close())
    }
}
