//! Durable channel streams in SQL: SQLite (a file in the data directory) or
//! PostgreSQL. Appends go through one writer task that group-commits them:
//! it takes every publication queued so far (up to `storage.batch_max_size`)
//! and commits them in one transaction, then delivers them in offset order
//! and answers their publishers. A publisher is answered only after COMMIT,
//! and a failed transaction fails every publication in it, so an
//! acknowledged publication is never lost and an unacknowledged one is never
//! delivered. A retention task trims streams to their size and TTL.
//!
//! Every database goes through one query layer ([`db`]); a database adds a
//! file with its dialect (`sqlite.rs`, `postgres.rs`) and one arm in
//! [`open_durable`].

mod bounded;
mod db;
mod postgres;
mod queue;
mod retention;
mod rows;
mod sqlite;
mod writer;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use futures_util::future::BoxFuture;
use herald_protocol::Publication;
use parking_lot::Mutex;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::event_queue::EventQueue;
use super::{
    AccessRules, Conditions, Deliver, HistoryPage, HistoryQuery, Store, StoreError, StreamOptions,
    StreamPosition,
};
use crate::clock::now_ms;
use crate::config::{Storage, StorageKind};
use crate::wire::control::AccessChange;
use db::{AccessRow, Db};
use retention::Retention;
use writer::{window_start, Answer, Pending, Writer};

/// The writer's queue holds this many batches; when it is full, `append`
/// waits for room, which slows publishers down to the commit rate.
const QUEUE_BATCHES: usize = 4;

/// Opens the durable store configured by `storage` (creating the SQLite
/// file under `data_dir` when needed), applies the schema migrations and
/// starts the writer and retention tasks. `deliver` receives each committed
/// publication in offset order; `opts_for` gives a channel's retention;
/// idempotency keys are kept for `key_window`.
pub async fn open_durable(
    storage: &Storage,
    data_dir: &Path,
    deliver: Deliver,
    opts_for: Arc<dyn Fn(&str) -> StreamOptions + Send + Sync>,
    key_window: std::time::Duration,
) -> Result<DurableStore, StoreError> {
    let (db, events): (Arc<dyn Db>, Arc<dyn EventQueue>) = match storage.kind {
        StorageKind::Sqlite => {
            let path = sqlite_path(storage, data_dir);
            let sql = sqlite::open(&path, storage.sqlite.synchronous, storage.timeout.0).await?;
            let sql = Arc::new(sql);
            (sql.clone(), sql)
        }
        StorageKind::Postgres => {
            let sql = Arc::new(postgres::open(&storage.postgres, storage.timeout.0).await?);
            (sql.clone(), sql)
        }
    };
    let timeout = storage.timeout.0;
    let db: Arc<dyn Db> = Arc::new(bounded::Bounded { db, limit: timeout });
    let events: Arc<dyn EventQueue> = Arc::new(bounded::BoundedEvents {
        events,
        limit: timeout,
    });
    let batch_max = storage.batch_max_size.max(1);
    let (queue, requests) = mpsc::channel(QUEUE_BATCHES * batch_max);
    let shutdown = CancellationToken::new();
    let removed = Arc::new(AtomicU64::new(0));
    let commits = CommitMetrics::default();
    let writer = Writer {
        db: db.clone(),
        deliver,
        batch_max,
        commits: commits.clone(),
    };
    let retention = Retention {
        db: db.clone(),
        opts_for,
        every: storage.retention_interval.0,
        key_window,
        removed: removed.clone(),
    };
    let tasks = vec![
        tokio::spawn(writer.run(requests, shutdown.clone())),
        tokio::spawn(retention.run(shutdown.clone())),
    ];
    Ok(DurableStore {
        db,
        events,
        commits,
        queue,
        timeout,
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

/// Each commit's time and publications (shared with `/metrics`, which
/// shows them as histograms).
#[derive(Debug, Clone)]
pub struct CommitMetrics {
    pub seconds: prometheus_client::metrics::histogram::Histogram,
    pub publications: prometheus_client::metrics::histogram::Histogram,
}

impl Default for CommitMetrics {
    fn default() -> Self {
        use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
        Self {
            // 100 µs to ~1.6 s; 1 to 4,096 publications.
            seconds: Histogram::new(exponential_buckets(0.000_1, 2.0, 15)),
            publications: Histogram::new(exponential_buckets(1.0, 2.0, 13)),
        }
    }
}

/// Channel streams in SQLite or PostgreSQL (see the module doc).
pub struct DurableStore {
    db: Arc<dyn Db>,
    /// Webhook events and holders, in the same database.
    events: Arc<dyn EventQueue>,
    commits: CommitMetrics,
    queue: mpsc::Sender<Pending>,
    /// `storage.timeout`: a publish's longest wait for its commit.
    timeout: std::time::Duration,
    removed: Arc<AtomicU64>,
    shutdown: CancellationToken,
    tasks: Mutex<Vec<JoinHandle<()>>>,
}

impl DurableStore {
    /// How commits have gone, for `/metrics`.
    pub fn commit_metrics(&self) -> &CommitMetrics {
        &self.commits
    }

    /// The webhook event queue kept in this database.
    pub fn events(&self) -> Arc<dyn EventQueue> {
        self.events.clone()
    }

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

    /// Whether the database answers now (for `/health`).
    pub async fn check(&self) -> Result<(), StoreError> {
        self.db.ping().await.map_err(|source| StoreError::Sql {
            what: "a health check",
            source,
        })
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

impl DurableStore {
    /// Queues `publication` (with the key to keep with it, both checked by
    /// [`rows::check`]) for the writer and waits for its answer, at most
    /// `storage.timeout` in all (waiting for room in the queue included).
    async fn queue(
        &self,
        publication: Publication,
        conditions: Conditions,
    ) -> Result<Answer, StoreError> {
        let (reply, answer) = oneshot::channel();
        let pending = Pending {
            publication,
            once: conditions.once,
            version: conditions.version,
            reply,
        };
        let answered = async {
            self.queue
                .send(pending)
                .await
                .map_err(|_| StoreError::Closed)?;
            answer.await.map_err(|_| StoreError::Closed)?
        };
        tokio::time::timeout(self.timeout, answered)
            .await
            .unwrap_or(Err(StoreError::TimedOut(self.timeout)))
    }
}

/// The kinds of `access_rules` rows.
const BLOCK: &str = "block";
const TOKEN: &str = "token";
const USER_TOKENS: &str = "user_tokens";

/// A stored access rule as the change that makes it; `None` for a kind
/// this version does not know.
fn access_change(
    (kind, subject, channel, issued_before, expire_at): AccessRow,
) -> Option<AccessChange> {
    Some(match kind.as_str() {
        BLOCK => AccessChange::Block {
            user: subject,
            expire_at,
        },
        TOKEN => AccessChange::RevokeToken {
            uid: subject,
            expire_at,
        },
        USER_TOKENS => AccessChange::InvalidateUserTokens {
            user: subject,
            channel,
            issued_before,
            expire_at,
        },
        _ => return None,
    })
}

impl AccessRules for DurableStore {
    fn load(&self, now: i64) -> BoxFuture<'_, Result<Vec<AccessChange>, StoreError>> {
        Box::pin(async move {
            let rows = self
                .db
                .access_rules(now)
                .await
                .map_err(|source| StoreError::Sql {
                    what: "loading access rules",
                    source,
                })?;
            Ok(rows.into_iter().filter_map(access_change).collect())
        })
    }

    fn save<'a>(&'a self, change: &'a AccessChange) -> BoxFuture<'a, Result<(), StoreError>> {
        Box::pin(async move {
            let done = match change {
                AccessChange::Unblock { user } => self.db.delete_access_rule(BLOCK, user).await,
                AccessChange::Block { user, expire_at } => {
                    let row = (BLOCK.into(), user.clone(), String::new(), 0, *expire_at);
                    self.db.put_access_rule(&row).await
                }
                AccessChange::RevokeToken { uid, expire_at } => {
                    let row = (TOKEN.into(), uid.clone(), String::new(), 0, *expire_at);
                    self.db.put_access_rule(&row).await
                }
                AccessChange::InvalidateUserTokens {
                    user,
                    channel,
                    issued_before,
                    expire_at,
                } => {
                    let row = (
                        USER_TOKENS.into(),
                        user.clone(),
                        channel.clone(),
                        *issued_before,
                        *expire_at,
                    );
                    self.db.put_access_rule(&row).await
                }
            };
            done.map_err(|source| StoreError::Sql {
                what: "saving an access rule",
                source,
            })
        })
    }
}

/// Waits for a committed publication's live delivery, which only logs when
/// it fails: committed is acknowledged, and subscribers recover what the
/// broker could not carry.
async fn delivered(committed: writer::Committed) -> Arc<Publication> {
    if let Err(e) = committed.delivered.await {
        tracing::warn!(
            channel = &*committed.publication.channel,
            error = %crate::report::Chain(&e),
            "committed publication not delivered live"
        );
    }
    committed.publication
}

impl Store for DurableStore {
    // Retention is applied by the retention task and at read time, so
    // appending needs no options.
    fn append(
        &self,
        publication: Publication,
        _opts: StreamOptions,
    ) -> BoxFuture<'_, Result<Arc<Publication>, StoreError>> {
        Box::pin(async move {
            // Checked before it can join a batch: what a database would
            // refuse must fail alone, not the batch it is committed with.
            rows::check(&publication, None)?;
            match self.queue(publication, Conditions::default()).await? {
                Answer::Committed(committed) => Ok(delivered(committed).await),
                // Only a conditional append can be refused.
                Answer::Known(_) => Err(StoreError::Invalid("an unconditional append was refused")),
            }
        })
    }

    fn append_if(
        &self,
        publication: Publication,
        _opts: StreamOptions,
        conditions: Conditions,
    ) -> BoxFuture<'_, Result<StreamPosition, StoreError>> {
        Box::pin(async move {
            let key = conditions.once.as_ref().map(|o| o.key.as_str());
            rows::check(&publication, key)?;
            if let Some(once) = &conditions.once {
                // Most retries find their key here, without the writer.
                let since = window_start(now_ms(), once);
                let known = self
                    .db
                    .find_key(&publication.channel, &once.key, since)
                    .await
                    .map_err(|e| sql("publish", e))?;
                if let Some((offset, epoch)) = known {
                    let offset = u64::try_from(offset).unwrap_or_default();
                    return Ok(StreamPosition { offset, epoch });
                }
            }
            match self.queue(publication, conditions).await? {
                Answer::Known(position) => Ok(position),
                Answer::Committed(committed) => {
                    let p = delivered(committed).await;
                    Ok(StreamPosition {
                        offset: p.offset,
                        epoch: p.epoch.as_deref().unwrap_or_default().to_owned(),
                    })
                }
            }
        })
    }

    fn history<'a>(
        &'a self,
        channel: &'a str,
        query: HistoryQuery,
        opts: StreamOptions,
    ) -> BoxFuture<'a, Result<HistoryPage, StoreError>> {
        Box::pin(async move {
            let (top, epoch) = self
                .db
                .position(channel)
                .await
                .map_err(|e| sql("history", e))?;
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
            let rows = self
                .db
                .read(channel, &range)
                .await
                .map_err(|e| sql("history", e))?;
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
        Box::pin(async move {
            self.db
                .trim(channel, i64::MAX, i64::MIN)
                .await
                .map_err(|e| sql("history remove", e))?;
            Ok(())
        })
    }
}

fn sql(what: &'static str, source: sqlx::Error) -> StoreError {
    StoreError::Sql { what, source }
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

#[cfg(test)]
mod tests;
