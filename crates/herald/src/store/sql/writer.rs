//! The single writer of a durable store: group commit. It takes every
//! queued append (up to `storage.batch_max_size`), reserves their offsets and
//! inserts them in one transaction, then delivers them in offset order and
//! answers their publishers.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use futures_util::future::BoxFuture;
use herald_protocol::Publication;
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use super::db::{is_key_conflict, Assigned, BatchKey, BatchWriter, Db, Versioned};
use super::now_ms;
use crate::broker::BrokerError;
use crate::store::{Deliver, Once, StoreError, StreamPosition, Version};

/// A publication waiting for the writer, and where to send the outcome.
pub(super) struct Pending {
    pub(super) publication: Publication,
    /// The idempotency key to keep with it.
    pub(super) once: Option<Once>,
    /// Its version: appended only when newer than its stream's.
    pub(super) version: Option<Version>,
    pub(super) reply: Reply,
}

/// Where a publisher waits for its publication's outcome.
pub(super) type Reply = oneshot::Sender<Result<Answer, StoreError>>;

pub(super) enum Answer {
    Committed(Committed),
    /// Not appended: its idempotency key was kept already (with the
    /// publication here), or its version was stale (where the stream is).
    Known(StreamPosition),
}

/// A committed publication (with its offset and epoch) and its delivery outcome
/// (awaited by the publisher, so that the writer never waits on the broker).
pub(super) struct Committed {
    pub(super) publication: Arc<Publication>,
    pub(super) delivered: BoxFuture<'static, Result<(), BrokerError>>,
}

/// The single writer: one transaction per batch.
pub(super) struct Writer {
    pub(super) db: Arc<dyn Db>,
    pub(super) deliver: Deliver,
    pub(super) batch_max: usize,
    pub(super) commits: super::CommitMetrics,
}

/// Part of a batch, committed in one transaction.
#[derive(Default)]
struct Part {
    publications: Vec<Publication>,
    onces: Vec<Option<Once>>,
    replies: Vec<Reply>,
    /// The version of a part's one publication: such a part is alone, as
    /// its stream is locked while its version is compared.
    version: Option<Version>,
}

impl Part {
    /// The batch as parts, in its order: runs of publications without a
    /// version, and each one with a version alone. A publication whose
    /// publisher stopped waiting (its `storage.timeout` passed, or it went
    /// away) is left out: it was never acknowledged, and committing it now
    /// would store what its publisher was told failed.
    fn split(batch: &mut Vec<Pending>) -> Vec<Part> {
        let mut parts = Vec::new();
        let mut run = Part::default();
        for p in batch.drain(..).filter(|p| !p.reply.is_closed()) {
            if p.version.is_some() && !run.is_empty() {
                parts.push(std::mem::take(&mut run));
            }
            let alone = p.version.is_some();
            run.publications.push(p.publication);
            run.onces.push(p.once);
            run.replies.push(p.reply);
            run.version = p.version;
            if alone {
                parts.push(std::mem::take(&mut run));
            }
        }
        if !run.is_empty() {
            parts.push(run);
        }
        parts
    }

    fn len(&self) -> usize {
        self.publications.len()
    }

    fn is_empty(&self) -> bool {
        self.publications.is_empty()
    }

    /// The second half; this part keeps the first.
    fn split_half(&mut self) -> Part {
        let half = self.len() / 2;
        Part {
            publications: self.publications.split_off(half),
            onces: self.onces.split_off(half),
            replies: self.replies.split_off(half),
            version: None,
        }
    }

    /// The keys to keep, each with where its window began.
    fn keys(&self, now_ms: i64) -> Vec<BatchKey<'_>> {
        let keys = self.onces.iter().enumerate();
        keys.filter_map(|(index, once)| {
            once.as_ref().map(|o| BatchKey {
                index,
                key: &o.key,
                cutoff_ms: window_start(now_ms, o),
            })
        })
        .collect()
    }

    fn fail(self, e: &Arc<sqlx::Error>) {
        for reply in self.replies {
            let _ = reply.send(Err(StoreError::Commit(e.clone())));
        }
    }
}

/// When the window of a key seen at `now_ms` began.
pub(super) fn window_start(now_ms: i64, once: &Once) -> i64 {
    let window = i64::try_from(once.window.as_millis()).unwrap_or(i64::MAX);
    now_ms.saturating_sub(window)
}

impl Writer {
    pub(super) async fn run(
        self,
        mut requests: mpsc::Receiver<Pending>,
        shutdown: CancellationToken,
    ) {
        let mut batch = Vec::with_capacity(self.batch_max);
        let mut conn = None;
        let mut closing = false;
        loop {
            if closing {
                requests.recv_many(&mut batch, self.batch_max).await;
            } else {
                tokio::select! {
                    biased;
                    _ = requests.recv_many(&mut batch, self.batch_max) => {}
                    () = shutdown.cancelled() => {
                        // Refuse new appends but commit those already queued.
                        requests.close();
                        closing = true;
                        continue;
                    }
                }
            }
            if batch.is_empty() {
                return; // Closed and drained, or every sender is gone.
            }
            self.commit(&mut conn, Part::split(&mut batch)).await;
            // No yield here: publishers answered now come back later than
            // one commit takes, so they join the batch after next whatever
            // the writer does, and yielding only delays the commit of those
            // already queued (measured: 13% fewer publications/s on
            // PostgreSQL, no gain on SQLite).
        }
    }

    /// Commits the batch and answers its publishers. When a key the batch
    /// keeps turns out to be kept already (committed since its publisher
    /// looked, or twice in the batch), the publications with known keys are
    /// answered with the first one's position and the rest committed
    /// again. When the database refuses the batch because of what it holds
    /// (an error of the database, not of the connection), the batch is
    /// split in halves, each committed in turn (so a channel's offsets keep
    /// the batch's order), until the publications that fail are alone: one
    /// bad publication never fails the others.
    async fn commit(&self, conn: &mut Option<Box<dyn BatchWriter>>, mut batch: Vec<Part>) {
        // Parts still to commit, the next one last.
        batch.reverse();
        let mut parts = batch;
        while let Some(mut part) = parts.pop() {
            match self.commit_once(conn, &part).await {
                Ok(Versioned::Appended(assigned)) => self.answer(part, assigned),
                Ok(Versioned::Stale(top, epoch)) => {
                    let offset = u64::try_from(top).unwrap_or_default();
                    for reply in part.replies {
                        let position = StreamPosition {
                            offset,
                            epoch: epoch.clone(),
                        };
                        let _ = reply.send(Ok(Answer::Known(position)));
                    }
                }
                Err(e) if is_key_conflict(&e) && self.answer_known(&mut part).await => {
                    if !part.is_empty() {
                        parts.push(part);
                    }
                }
                Err(e) if part.len() > 1 && matches!(e, sqlx::Error::Database(_)) => {
                    tracing::warn!(
                        error = %crate::report::Chain(&e),
                        publications = part.len(),
                        "a batch was refused: committing its halves apart"
                    );
                    let second = part.split_half();
                    parts.push(second);
                    parts.push(part);
                }
                Err(e) => {
                    let e = Arc::new(e);
                    part.fail(&e);
                    // The connection failed or did not answer in time: the
                    // parts left would each wait for it again.
                    if !matches!(*e, sqlx::Error::Database(_)) {
                        parts.drain(..).for_each(|rest| rest.fail(&e));
                    }
                }
            }
        }
    }

    /// One transaction on `conn` (connecting first when there is none). A
    /// failed commit drops the connection, so that the next starts on a
    /// fresh one whatever state it was in.
    async fn commit_once(
        &self,
        conn: &mut Option<Box<dyn BatchWriter>>,
        part: &Part,
    ) -> Result<Versioned, sqlx::Error> {
        let now = now_ms();
        let keys = part.keys(now);
        let writer = match conn {
            Some(c) => c,
            None => match self.db.connect_writer().await {
                Ok(c) => conn.insert(c),
                Err(e) => return Err(e),
            },
        };
        let pubs = &part.publications;
        let started = std::time::Instant::now();
        let result = match &part.version {
            Some(version) => writer.commit_versioned(pubs, &keys, version, now).await,
            None => writer
                .commit(pubs, &keys, now)
                .await
                .map(Versioned::Appended),
        };
        if result.is_err() {
            *conn = None;
        } else {
            self.commits
                .seconds
                .observe(started.elapsed().as_secs_f64());
            self.commits.publications.observe(pubs.len() as f64);
        }
        result
    }

    /// Answers, and takes out of `part`, the publications whose key is
    /// kept already; returns whether there were any.
    async fn answer_known(&self, part: &mut Part) -> bool {
        let now = now_ms();
        let mut found = false;
        let mut i = 0;
        while i < part.len() {
            let known = match &part.onces[i] {
                Some(once) => {
                    let channel = &part.publications[i].channel;
                    let since = window_start(now, once);
                    // A failed look is no answer, and the database is not
                    // asked again: the rest fails as the database refused it.
                    match self.db.find_key(channel, &once.key, since).await {
                        Ok(known) => known,
                        Err(_) => break,
                    }
                }
                None => None,
            };
            let Some((offset, epoch)) = known else {
                i += 1;
                continue;
            };
            found = true;
            part.publications.remove(i);
            part.onces.remove(i);
            let reply = part.replies.remove(i);
            let offset = u64::try_from(offset).unwrap_or_default();
            let _ = reply.send(Ok(Answer::Known(StreamPosition { offset, epoch })));
        }
        found
    }

    /// Delivers committed publications in offset order and answers their
    /// publishers.
    fn answer(&self, part: Part, assigned: Assigned) {
        let answers = part
            .publications
            .into_iter()
            .zip(assigned)
            .zip(part.replies);
        for ((publication, (offset, epoch)), reply) in answers {
            let publication = Arc::new(publication.with_offset(offset).with_epoch(epoch));
            let delivered = (self.deliver)(publication.clone());
            let _ = reply.send(Ok(Answer::Committed(Committed {
                publication,
                delivered,
            })));
        }
    }
}

/// How many publications of each channel a batch holds; sorted, so that
/// transactions lock streams in one order and cannot deadlock each other.
pub(super) fn counts(pubs: &[Publication]) -> BTreeMap<&str, i64> {
    let mut counts = BTreeMap::new();
    for p in pubs {
        *counts.entry(&*p.channel).or_insert(0) += 1;
    }
    counts
}

/// How far below its stream's new top each publication's offset is: a
/// channel's last publication in the batch gets the top itself (0), the one
/// before it top - 1, and so on. Lets SQL compute offsets from the top.
pub(super) fn back_offsets(pubs: &[Publication], counts: &BTreeMap<&str, i64>) -> Vec<i64> {
    let mut seen: HashMap<&str, i64> = HashMap::with_capacity(counts.len());
    pubs.iter()
        .map(|p| {
            let index = seen.entry(&*p.channel).or_insert(0);
            *index += 1;
            counts.get(&*p.channel).copied().unwrap_or(0) - *index
        })
        .collect()
}

/// Gives each publication its offset, given each channel's new top offset
/// and epoch after reserving `counts(pubs)` offsets: a channel's offsets
/// follow the batch order and end at its new top.
pub(super) fn assign(
    pubs: &[Publication],
    tops: Vec<(String, String, i64)>,
) -> Result<Assigned, sqlx::Error> {
    let counts = counts(pubs);
    let mut next: HashMap<String, (i64, Arc<str>)> = HashMap::with_capacity(tops.len());
    for (channel, epoch, top) in tops {
        let count = counts.get(channel.as_str()).copied().unwrap_or(0);
        next.insert(channel, (top - count + 1, Arc::from(epoch)));
    }
    pubs.iter()
        .map(|p| {
            let (offset, epoch) = next.get_mut(&*p.channel).ok_or_else(|| {
                sqlx::Error::Protocol(format!("no stream row returned for {}", p.channel))
            })?;
            *offset += 1;
            Ok(((*offset - 1) as u64, epoch.clone()))
        })
        .collect()
}
