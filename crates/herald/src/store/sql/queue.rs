//! Webhook events and holders in SQL (tables of the `0006_webhooks` and
//! `0007_webhook_claims` migrations), over every dialect. Claims skip rows
//! another node has locked (PostgreSQL's `SKIP LOCKED`, where the database
//! is shared) and only the claimer settles an event; a holder change first
//! takes a lock per key (PostgreSQL advisory locks, all of a transaction's
//! keys at once and in order, so nodes cannot deadlock), so that of two
//! nodes racing on one user exactly one sees the first connection and one
//! the last. Writes begin as writes (`BEGIN IMMEDIATE` on SQLite).

use futures_util::future::BoxFuture;
use sqlx::{Encode, Executor, FromRow, IntoArguments, Type};

use super::db::{Conn, Dialect, Sql};
use crate::store::event_queue::{
    Change, Claimed, DeadLetter, EventQueue, HolderKind, NewEvent, Orphaned, Settled,
};
use crate::store::StoreError;

/// Claims due events: the rows, then (after the dialect's locking clause)
/// what is returned.
macro_rules! claim_sql {
    () => {
        "UPDATE webhook_events SET claimed_until = $1, claimed_by = $4 WHERE id IN (\
         SELECT id FROM webhook_events \
         WHERE dead = 0 AND next_at <= $2 AND claimed_until <= $2 \
         ORDER BY next_at LIMIT $3"
    };
}

macro_rules! claimed_sql {
    () => {
        "RETURNING id, hook, event, body, attempts"
    };
}

/// Nodes unseen since $1.
macro_rules! stale_sql {
    () => {
        "SELECT node FROM webhook_nodes WHERE seen_ms < $1 ORDER BY node"
    };
}

/// An event already there is left as it is: a recording whose answer did
/// not come in time (`storage.timeout`) may have committed, and the writer
/// records the same events again.
const INSERT_EVENT: &str =
    "INSERT INTO webhook_events (id, hook, event, body, next_at, created_ms) \
     VALUES ($1, $2, $3, $4, $5, $5) ON CONFLICT (id) DO NOTHING";

const COUNT_HOLDERS: &str = "SELECT COUNT(*) FROM webhook_holders WHERE kind = $1 AND key = $2";

const ADD_HOLDER: &str = "INSERT INTO webhook_holders (kind, key, node) VALUES ($1, $2, $3) \
     ON CONFLICT (kind, key, node) DO NOTHING";

const REMOVE_HOLDER: &str =
    "DELETE FROM webhook_holders WHERE kind = $1 AND key = $2 AND node = $3";

/// Outcomes count only from the node that holds the claim (another may
/// have taken the event over after a lapsed claim).
const SETTLE_DELIVERED: &str = "DELETE FROM webhook_events WHERE id = $1 AND claimed_by = $2";

/// A failed attempt: due again at $3, or (with $3 = 0) a dead letter.
const SETTLE_FAILED: &str = "UPDATE webhook_events \
     SET attempts = attempts + 1, next_at = $3, dead = CASE WHEN $3 = 0 THEN 1 ELSE 0 END, \
     claimed_until = 0, last_error = $4 WHERE id = $1 AND claimed_by = $2";

const DEAD_LETTERS: &str =
    "SELECT id, hook, event, body, attempts, last_error, created_ms FROM webhook_events \
     WHERE dead = 1 AND ($1 = '' OR hook = $1) ORDER BY created_ms, id LIMIT $2";

/// Dead letters due again: one (`$1` its id) or all (`$1` empty), of one
/// webhook (`$2`) or all (`$2` empty).
const REDRIVE: &str = "UPDATE webhook_events \
     SET dead = 0, attempts = 0, next_at = $3, claimed_until = 0, last_error = '' \
     WHERE dead = 1 AND ($1 = '' OR id = $1) AND ($2 = '' OR hook = $2)";

const COUNTS: &str = "SELECT \
     COALESCE(SUM(CASE WHEN dead = 0 THEN 1 ELSE 0 END), 0), \
     COALESCE(SUM(CASE WHEN dead = 1 THEN 1 ELSE 0 END), 0) FROM webhook_events";

const TOUCH_NODE: &str = "UPDATE webhook_nodes SET seen_ms = $2 WHERE node = $1";

const ADD_NODE: &str = "INSERT INTO webhook_nodes (node, seen_ms) VALUES ($1, $2) \
     ON CONFLICT (node) DO UPDATE SET seen_ms = excluded.seen_ms";

const HELD_BY: &str = "SELECT kind, key, node FROM webhook_holders WHERE node = $1";

const RELEASE_NODE: &str = "DELETE FROM webhook_holders WHERE node = $1";

const FORGET_NODE: &str = "DELETE FROM webhook_nodes WHERE node = $1";

const RELEASE_CLAIMS_OF: &str =
    "UPDATE webhook_events SET claimed_until = 0 WHERE claimed_by = $1 AND claimed_until > 0";

const RELEASE_ALL_CLAIMS: &str =
    "UPDATE webhook_events SET claimed_until = 0 WHERE claimed_until > 0";

fn failed(what: &'static str) -> impl FnOnce(sqlx::Error) -> StoreError {
    move |source| StoreError::Sql { what, source }
}

/// The lock name of a holder key (`release` writes the same from rows).
fn lock_key(kind: HolderKind, key: &str) -> String {
    format!("{}:{key}", kind.as_str())
}

async fn insert_events<D: Dialect>(
    conn: &mut Conn<D>,
    events: &[NewEvent],
    now_ms: i64,
) -> Result<usize, sqlx::Error>
where
    for<'e> &'e mut Conn<D>: Executor<'e, Database = D::Db>,
    <D::Db as sqlx::Database>::Arguments: IntoArguments<D::Db>,
    for<'q> &'q str: Encode<'q, D::Db> + Type<D::Db>,
    for<'q> i64: Encode<'q, D::Db> + Type<D::Db>,
{
    for e in events {
        sqlx::query(INSERT_EVENT)
            .bind(e.id.as_str())
            .bind(e.hook.as_str())
            .bind(e.event.as_str())
            .bind(e.body.as_str())
            .bind(now_ms)
            .execute(&mut *conn)
            .await?;
    }
    Ok(events.len())
}

async fn holders<D: Dialect>(
    conn: &mut Conn<D>,
    kind: HolderKind,
    key: &str,
) -> Result<i64, sqlx::Error>
where
    for<'e> &'e mut Conn<D>: Executor<'e, Database = D::Db>,
    <D::Db as sqlx::Database>::Arguments: IntoArguments<D::Db>,
    for<'q> &'q str: Encode<'q, D::Db> + Type<D::Db>,
    for<'r> (i64,): FromRow<'r, <D::Db as sqlx::Database>::Row>,
{
    let (n,): (i64,) = sqlx::query_as(COUNT_HOLDERS)
        .bind(kind.as_str())
        .bind(key)
        .fetch_one(&mut *conn)
        .await?;
    Ok(n)
}

/// Applies one holder change; returns the events written (those of a first
/// holder added, or a last one removed).
async fn hold<D: Dialect>(
    conn: &mut Conn<D>,
    node: &str,
    (kind, key, add): (HolderKind, &str, bool),
    events: &[NewEvent],
    now_ms: i64,
) -> Result<usize, sqlx::Error>
where
    for<'e> &'e mut Conn<D>: Executor<'e, Database = D::Db>,
    <D::Db as sqlx::Database>::Arguments: IntoArguments<D::Db>,
    for<'q> &'q str: Encode<'q, D::Db> + Type<D::Db>,
    for<'q> i64: Encode<'q, D::Db> + Type<D::Db>,
    for<'r> (i64,): FromRow<'r, <D::Db as sqlx::Database>::Row>,
{
    let statement = if add { ADD_HOLDER } else { REMOVE_HOLDER };
    let before = holders::<D>(conn, kind, key).await?;
    let changed = sqlx::query(statement)
        .bind(kind.as_str())
        .bind(key)
        .bind(node)
        .execute(&mut *conn)
        .await?;
    let edge = if add { before == 0 } else { before == 1 };
    if D::rows_affected(&changed) > 0 && edge {
        insert_events::<D>(conn, events, now_ms).await
    } else {
        Ok(0)
    }
}

/// Releases what `nodes` held — writing the events `orphaned` makes for
/// keys left without a holder — their claims, and the nodes themselves.
/// Every key is locked at once, in order.
async fn release<D: Dialect>(
    conn: &mut Conn<D>,
    nodes: &[String],
    now_ms: i64,
    orphaned: Orphaned<'_>,
) -> Result<(), sqlx::Error>
where
    for<'e> &'e mut Conn<D>: Executor<'e, Database = D::Db>,
    <D::Db as sqlx::Database>::Arguments: IntoArguments<D::Db>,
    for<'q> &'q str: Encode<'q, D::Db> + Type<D::Db>,
    for<'q> i64: Encode<'q, D::Db> + Type<D::Db>,
    for<'r> (i64,): FromRow<'r, <D::Db as sqlx::Database>::Row>,
    for<'r> (String, String, String): FromRow<'r, <D::Db as sqlx::Database>::Row>,
{
    let mut held: Vec<(String, String, String)> = Vec::new();
    for node in nodes {
        let rows: Vec<(String, String, String)> = sqlx::query_as(HELD_BY)
            .bind(node.as_str())
            .fetch_all(&mut *conn)
            .await?;
        held.extend(rows);
    }
    let mut keys: Vec<String> = held
        .iter()
        .map(|(kind, key, _)| format!("{kind}:{key}"))
        .collect();
    keys.sort();
    keys.dedup();
    D::lock_keys(conn, &keys).await?;
    for node in nodes {
        for statement in [RELEASE_NODE, FORGET_NODE, RELEASE_CLAIMS_OF] {
            sqlx::query(statement)
                .bind(node.as_str())
                .execute(&mut *conn)
                .await?;
        }
    }
    for (kind, key, node) in &held {
        // A kind of a newer build's is its to tell.
        let Some(kind) = HolderKind::of(kind) else {
            continue;
        };
        if holders::<D>(conn, kind, key).await? == 0 {
            insert_events::<D>(conn, &orphaned(kind, key, node), now_ms).await?;
        }
    }
    Ok(())
}

impl<D: Dialect> Sql<D> {
    /// A transaction that writes (see [`Dialect::BEGIN_WRITE`]).
    async fn begin_write(
        &self,
        what: &'static str,
    ) -> Result<sqlx::Transaction<'static, D::Db>, StoreError> {
        self.pool()
            .begin_with(D::BEGIN_WRITE)
            .await
            .map_err(failed(what))
    }
}

impl<D: Dialect> EventQueue for Sql<D>
where
    for<'c> &'c mut Conn<D>: Executor<'c, Database = D::Db>,
    <D::Db as sqlx::Database>::Arguments: IntoArguments<D::Db>,
    for<'q> &'q str: Encode<'q, D::Db> + Type<D::Db>,
    for<'q> i64: Encode<'q, D::Db> + Type<D::Db>,
    for<'r> (i64,): FromRow<'r, <D::Db as sqlx::Database>::Row>,
    for<'r> (i64, i64): FromRow<'r, <D::Db as sqlx::Database>::Row>,
    for<'r> (String,): FromRow<'r, <D::Db as sqlx::Database>::Row>,
    for<'r> (String, String, String): FromRow<'r, <D::Db as sqlx::Database>::Row>,
    for<'r> (String, String, String, String, i64): FromRow<'r, <D::Db as sqlx::Database>::Row>,
    for<'r> (String, String, String, String, i64, String, i64):
        FromRow<'r, <D::Db as sqlx::Database>::Row>,
{
    fn record<'a>(
        &'a self,
        node: &'a str,
        changes: &'a [Change],
        now_ms: i64,
    ) -> BoxFuture<'a, Result<usize, StoreError>> {
        Box::pin(async move {
            let what = "recording webhook events";
            let mut tx = self.begin_write(what).await?;
            let mut keys: Vec<String> = changes
                .iter()
                .filter_map(|c| match c {
                    Change::Hold { kind, key, .. } => Some(lock_key(*kind, key)),
                    Change::Events(_) => None,
                })
                .collect();
            keys.sort();
            keys.dedup();
            D::lock_keys(&mut tx, &keys).await.map_err(failed(what))?;
            let mut written = 0;
            for change in changes {
                written += match change {
                    Change::Events(events) => insert_events::<D>(&mut tx, events, now_ms).await,
                    Change::Hold {
                        kind,
                        key,
                        add,
                        events,
                    } => hold::<D>(&mut tx, node, (*kind, key, *add), events, now_ms).await,
                }
                .map_err(failed(what))?;
            }
            tx.commit().await.map_err(failed(what))?;
            Ok(written)
        })
    }

    fn claim<'a>(
        &'a self,
        node: &'a str,
        now_ms: i64,
        until_ms: i64,
        limit: i64,
    ) -> BoxFuture<'a, Result<Vec<Claimed>, StoreError>> {
        Box::pin(async move {
            let sql = if D::SHARED {
                concat!(claim_sql!(), " FOR UPDATE SKIP LOCKED) ", claimed_sql!())
            } else {
                concat!(claim_sql!(), ") ", claimed_sql!())
            };
            let rows: Vec<(String, String, String, String, i64)> = sqlx::query_as(sql)
                .bind(until_ms)
                .bind(now_ms)
                .bind(limit)
                .bind(node)
                .fetch_all(self.pool())
                .await
                .map_err(failed("claiming webhook events"))?;
            Ok(rows
                .into_iter()
                .map(|(id, hook, event, body, attempts)| Claimed {
                    id,
                    hook,
                    event,
                    body,
                    attempts,
                })
                .collect())
        })
    }

    fn settle<'a>(
        &'a self,
        node: &'a str,
        outcomes: &'a [Settled],
    ) -> BoxFuture<'a, Result<(), StoreError>> {
        Box::pin(async move {
            let what = "settling webhook deliveries";
            let mut tx = self.begin_write(what).await?;
            for outcome in outcomes {
                let q = match outcome {
                    Settled::Delivered { id } => {
                        sqlx::query(SETTLE_DELIVERED).bind(id.as_str()).bind(node)
                    }
                    Settled::Retry { id, next_at, error } => sqlx::query(SETTLE_FAILED)
                        .bind(id.as_str())
                        .bind(node)
                        .bind((*next_at).max(1))
                        .bind(error.as_str()),
                    Settled::Dead { id, error } => sqlx::query(SETTLE_FAILED)
                        .bind(id.as_str())
                        .bind(node)
                        .bind(0i64)
                        .bind(error.as_str()),
                };
                q.execute(&mut *tx).await.map_err(failed(what))?;
            }
            tx.commit().await.map_err(failed(what))
        })
    }

    fn dead_letters<'a>(
        &'a self,
        hook: &'a str,
        limit: i64,
    ) -> BoxFuture<'a, Result<Vec<DeadLetter>, StoreError>> {
        Box::pin(async move {
            let rows: Vec<(String, String, String, String, i64, String, i64)> =
                sqlx::query_as(DEAD_LETTERS)
                    .bind(hook)
                    .bind(limit)
                    .fetch_all(self.pool())
                    .await
                    .map_err(failed("listing dead letters"))?;
            Ok(rows
                .into_iter()
                .map(
                    |(id, hook, event, body, attempts, last_error, created_ms)| DeadLetter {
                        id,
                        hook,
                        event,
                        body,
                        attempts,
                        last_error,
                        created_ms,
                    },
                )
                .collect())
        })
    }

    fn redrive<'a>(
        &'a self,
        ids: &'a [String],
        hook: &'a str,
        now_ms: i64,
    ) -> BoxFuture<'a, Result<u64, StoreError>> {
        Box::pin(async move {
            let what = "redriving dead letters";
            let mut tx = self.begin_write(what).await?;
            let every = [String::new()];
            let mut n = 0;
            for id in if ids.is_empty() { &every[..] } else { ids } {
                let r = sqlx::query(REDRIVE)
                    .bind(id.as_str())
                    .bind(hook)
                    .bind(now_ms)
                    .execute(&mut *tx)
                    .await
                    .map_err(failed(what))?;
                n += D::rows_affected(&r);
            }
            tx.commit().await.map_err(failed(what))?;
            Ok(n)
        })
    }

    fn counts(&self) -> BoxFuture<'_, Result<(i64, i64), StoreError>> {
        Box::pin(async move {
            sqlx::query_as(COUNTS)
                .fetch_one(self.pool())
                .await
                .map_err(failed("counting webhook events"))
        })
    }

    fn heartbeat<'a>(
        &'a self,
        node: &'a str,
        now_ms: i64,
    ) -> BoxFuture<'a, Result<bool, StoreError>> {
        Box::pin(async move {
            let what = "recording a node heartbeat";
            let touched = sqlx::query(TOUCH_NODE)
                .bind(node)
                .bind(now_ms)
                .execute(self.pool())
                .await
                .map_err(failed(what))?;
            if D::rows_affected(&touched) > 0 {
                return Ok(true);
            }
            sqlx::query(ADD_NODE)
                .bind(node)
                .bind(now_ms)
                .execute(self.pool())
                .await
                .map_err(failed(what))?;
            Ok(false)
        })
    }

    fn sweep<'a>(
        &'a self,
        stale_ms: i64,
        now_ms: i64,
        orphaned: Orphaned<'a>,
    ) -> BoxFuture<'a, Result<usize, StoreError>> {
        Box::pin(async move {
            let what = "releasing vanished nodes";
            let stale = if D::SHARED {
                concat!(stale_sql!(), " FOR UPDATE SKIP LOCKED")
            } else {
                stale_sql!()
            };
            let mut tx = self.begin_write(what).await?;
            let gone: Vec<(String,)> = sqlx::query_as(stale)
                .bind(stale_ms)
                .fetch_all(&mut *tx)
                .await
                .map_err(failed(what))?;
            let gone: Vec<String> = gone.into_iter().map(|(n,)| n).collect();
            release::<D>(&mut tx, &gone, now_ms, orphaned)
                .await
                .map_err(failed(what))?;
            tx.commit().await.map_err(failed(what))?;
            Ok(gone.len())
        })
    }

    fn recover(&self) -> BoxFuture<'_, Result<(), StoreError>> {
        Box::pin(async move {
            if D::SHARED {
                // Other nodes' claims may be live; a dead one's lapse, or
                // are released with it.
                return Ok(());
            }
            sqlx::query(RELEASE_ALL_CLAIMS)
                .execute(self.pool())
                .await
                .map(|_| ())
                .map_err(failed("releasing a previous run's claims"))
        })
    }

    fn leave<'a>(
        &'a self,
        node: &'a str,
        now_ms: i64,
        orphaned: Orphaned<'a>,
    ) -> BoxFuture<'a, Result<(), StoreError>> {
        Box::pin(async move {
            let what = "releasing the node";
            let mut tx = self.begin_write(what).await?;
            release::<D>(&mut tx, &[node.to_string()], now_ms, orphaned)
                .await
                .map_err(failed(what))?;
            tx.commit().await.map_err(failed(what))
        })
    }
}
