//! Durable streams against real databases, through the store's public
//! API: a fresh SQLite file per test and, when `HERALD_TEST_POSTGRES_URL` is
//! set, a fresh PostgreSQL database per test (dropped after). Every
//! behaviour runs on both backends.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use herald::config::{Dur, Storage, StorageKind};
use herald::store::{
    open_durable, Conditions, Deliver, DurableStore, HistoryQuery, Once, Store, StoreError,
    StreamOptions, StreamPosition, Version,
};
use herald_protocol::{ClientInfo, Publication};
use herald_testkit::{eventually, wait_until, TestDatabase};
use parking_lot::Mutex;
use sqlx::Connection;

/// How long stores keep idempotency keys unless a test says otherwise.
const KEY_WINDOW: Duration = Duration::from_secs(300);

/// Where a test's store lives; cheap to clone into the test's tasks.
#[derive(Clone)]
struct Fixture {
    storage: Storage,
    dir: Arc<tempfile::TempDir>,
    /// The test's PostgreSQL database, dropped with the last clone.
    postgres: Option<Arc<TestDatabase>>,
}

impl Fixture {
    fn sqlite() -> Self {
        Self {
            storage: Storage::default(),
            dir: Arc::new(tempfile::tempdir().expect("temp dir")),
            postgres: None,
        }
    }

    /// A fresh database on the test server, or `None` (with a note) when
    /// no server is configured.
    fn postgres() -> Option<Self> {
        let db = TestDatabase::create()?;
        let mut storage = Storage {
            kind: StorageKind::Postgres,
            ..Default::default()
        };
        storage.postgres.url = db.url.clone().into();
        Some(Self {
            storage,
            dir: Arc::new(tempfile::tempdir().expect("temp dir")),
            postgres: Some(Arc::new(db)),
        })
    }

    fn with(mut self, change: impl FnOnce(&mut Storage)) -> Self {
        change(&mut self.storage);
        self
    }

    fn sqlite_file(&self) -> PathBuf {
        self.dir.path().join("streams.db")
    }

    async fn open(&self, deliver: Deliver, opts: StreamOptions) -> DurableStore {
        self.open_with(deliver, Arc::new(move |_: &str| opts)).await
    }

    async fn open_with(
        &self,
        deliver: Deliver,
        opts_for: Arc<dyn Fn(&str) -> StreamOptions + Send + Sync>,
    ) -> DurableStore {
        open_durable(
            &self.storage,
            self.dir.path(),
            deliver,
            opts_for,
            KEY_WINDOW,
        )
        .await
        .expect("open durable store")
    }

    /// The number a `SELECT COUNT(*) …` gives on the test's database.
    async fn count(&self, sql: &'static str) -> i64 {
        match &self.postgres {
            Some(db) => {
                let mut conn = sqlx::PgConnection::connect(&db.url).await.unwrap();
                sqlx::query_scalar(sql).fetch_one(&mut conn).await.unwrap()
            }
            None => {
                let url = format!("sqlite://{}", self.sqlite_file().display());
                let mut conn = sqlx::SqliteConnection::connect(&url).await.unwrap();
                sqlx::query_scalar(sql).fetch_one(&mut conn).await.unwrap()
            }
        }
    }

    /// Holds writes back from another connection until [`Held::release`]:
    /// SQLite's write lock, or PostgreSQL's `streams` table, which every
    /// commit updates.
    async fn hold_writes(&self) -> Held {
        match &self.postgres {
            Some(db) => {
                let mut conn = sqlx::PgConnection::connect(&db.url).await.unwrap();
                sqlx::raw_sql("BEGIN; LOCK TABLE streams IN EXCLUSIVE MODE")
                    .execute(&mut conn)
                    .await
                    .unwrap();
                Held::Postgres(conn)
            }
            None => {
                let url = format!("sqlite://{}", self.sqlite_file().display());
                let mut conn = sqlx::SqliteConnection::connect(&url).await.unwrap();
                sqlx::raw_sql("BEGIN IMMEDIATE")
                    .execute(&mut conn)
                    .await
                    .unwrap();
                Held::Sqlite(conn)
            }
        }
    }

    /// Runs one statement on the test's database, behind the store's back.
    async fn execute(&self, sql: &'static str) {
        match &self.postgres {
            Some(db) => {
                let mut conn = sqlx::PgConnection::connect(&db.url).await.unwrap();
                sqlx::raw_sql(sql).execute(&mut conn).await.unwrap();
            }
            None => {
                let url = format!("sqlite://{}", self.sqlite_file().display());
                let mut conn = sqlx::SqliteConnection::connect(&url).await.unwrap();
                sqlx::raw_sql(sql).execute(&mut conn).await.unwrap();
            }
        }
    }
}

/// A connection holding writes back (see [`Fixture::hold_writes`]).
enum Held {
    Postgres(sqlx::PgConnection),
    Sqlite(sqlx::SqliteConnection),
}

impl Held {
    async fn release(self) {
        match self {
            Held::Postgres(mut c) => sqlx::raw_sql("ROLLBACK").execute(&mut c).await.map(drop),
            Held::Sqlite(mut c) => sqlx::raw_sql("ROLLBACK").execute(&mut c).await.map(drop),
        }
        .unwrap();
    }
}

/// Declares a test per backend for an `async fn(Fixture)`.
macro_rules! on_both {
    ($($name:ident),* $(,)?) => {$(
        mod $name {
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn sqlite() {
                super::$name(super::Fixture::sqlite()).await;
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn postgres() {
                if let Some(fixture) = super::Fixture::postgres() {
                    super::$name(fixture).await;
                }
            }
        }
    )*};
}

on_both!(
    access_rules_persist_and_reload,
    appends_get_offsets_epoch_and_are_delivered,
    concurrent_appends_are_gap_free_and_in_order,
    history_queries_match_the_protocol,
    remove_keeps_the_position,
    retention_trims_by_size_and_ttl,
    reads_apply_retention_before_the_task_runs,
    reopening_keeps_epochs_and_offsets,
    failed_commits_acknowledge_and_deliver_nothing,
    a_publication_given_up_while_queued_is_not_committed,
    a_refused_publication_fails_alone,
    reading_streams_that_do_not_exist_creates_nothing,
    keyed_appends_publish_once_even_after_a_restart,
    ended_keys_publish_again_and_are_forgotten,
    stale_versions_are_not_appended,
    webhook_queue_holds_claims_and_sweeps,
);

/// Delivered publications as (channel, offset), in delivery order.
type Seen = Arc<Mutex<Vec<(String, u64)>>>;

fn recorder() -> (Deliver, Seen) {
    let seen: Seen = Arc::default();
    let log = seen.clone();
    let deliver: Deliver = Arc::new(move |p: Arc<Publication>| {
        log.lock().push((p.channel.to_string(), p.offset));
        Box::pin(async { Ok(()) })
    });
    (deliver, seen)
}

fn publication(channel: &str, n: u64) -> Publication {
    Publication::new(Arc::from(channel), Bytes::from(n.to_string()), None)
}

/// The epoch a store set on a publication it appended.
fn epoch_of(p: &Publication) -> String {
    p.epoch
        .as_deref()
        .expect("appended with an epoch")
        .to_owned()
}

fn unbounded() -> StreamOptions {
    StreamOptions::default()
}

fn all() -> HistoryQuery {
    HistoryQuery {
        limit: Some(usize::MAX),
        ..Default::default()
    }
}

fn offsets(page: &herald::store::HistoryPage) -> Vec<u64> {
    page.publications.iter().map(|p| p.offset).collect()
}

async fn appends_get_offsets_epoch_and_are_delivered(fx: Fixture) {
    let (deliver, seen) = recorder();
    let store = fx.open(deliver, unbounded()).await;
    let info = ClientInfo {
        user: "alice".into(),
        client: "c1".into(),
        conn_info: Some(Bytes::from_static(br#"{"name":"Alice"}"#)),
        chan_info: None,
    };
    let tagged = Publication::new(
        Arc::from("a"),
        Bytes::from_static(br#"{"text":"hi"}"#),
        Some(Arc::new(info.clone())),
    )
    .with_tags(BTreeMap::from([("k".to_string(), "v".to_string())]));
    let first = store.append(tagged, unbounded()).await.unwrap();
    let epoch_a = epoch_of(&first);
    assert_eq!(first.offset, 1);
    for n in 2..=3 {
        let p = store
            .append(publication("a", n), unbounded())
            .await
            .unwrap();
        assert_eq!((p.offset, epoch_of(&p)), (n, epoch_a.clone()));
    }
    let b1 = store
        .append(publication("b", 1), unbounded())
        .await
        .unwrap();
    assert_eq!(b1.offset, 1);
    assert_eq!(
        *seen.lock(),
        vec![
            ("a".into(), 1),
            ("a".into(), 2),
            ("a".into(), 3),
            ("b".into(), 1)
        ]
    );

    let page = store.history("a", all(), unbounded()).await.unwrap();
    assert_eq!(
        page.position,
        StreamPosition {
            offset: 3,
            epoch: epoch_a
        }
    );
    assert_eq!(offsets(&page), vec![1, 2, 3]);
    let back = &page.publications[0];
    assert_eq!(&*back.channel, "a");
    assert_eq!(&back.data[..], br#"{"text":"hi"}"#);
    assert_eq!(back.info.as_deref(), Some(&info));
    assert_eq!(back.tags.get("k").map(String::as_str), Some("v"));
    assert!(page.publications[1].info.is_none());
    assert!(page.publications[1].tags.is_empty());
    store.close().await;
}

async fn concurrent_appends_are_gap_free_and_in_order(fx: Fixture) {
    const TASKS: u64 = 32;
    const EACH: u64 = 40;
    const CHANNELS: u64 = 3;
    let (deliver, seen) = recorder();
    let fx = fx.with(|s| s.batch_max_size = 16);
    let store = Arc::new(fx.open(deliver, unbounded()).await);
    let mut tasks = Vec::new();
    for t in 0..TASKS {
        let store = store.clone();
        tasks.push(tokio::spawn(async move {
            let mut got = Vec::new();
            for n in 0..EACH {
                let channel = format!("c{}", (t + n) % CHANNELS);
                let p = store
                    .append(publication(&channel, n), unbounded())
                    .await
                    .unwrap();
                got.push((channel, p.offset));
            }
            got
        }));
    }
    let mut acked: HashMap<String, Vec<u64>> = HashMap::new();
    for task in tasks {
        for (channel, offset) in task.await.unwrap() {
            acked.entry(channel).or_default().push(offset);
        }
    }
    let mut delivered: HashMap<String, Vec<u64>> = HashMap::new();
    for (channel, offset) in seen.lock().iter() {
        delivered.entry(channel.clone()).or_default().push(*offset);
    }
    let total: usize = acked.values().map(Vec::len).sum();
    assert_eq!(total as u64, TASKS * EACH);
    for (channel, mut acked) in acked {
        let n = acked.len() as u64;
        assert_eq!(
            delivered[&channel],
            (1..=n).collect::<Vec<_>>(),
            "{channel} delivery"
        );
        acked.sort_unstable();
        assert_eq!(acked, (1..=n).collect::<Vec<_>>(), "{channel} offsets");
        let page = store.history(&channel, all(), unbounded()).await.unwrap();
        assert_eq!(page.position.offset, n);
        assert_eq!(offsets(&page), (1..=n).collect::<Vec<_>>());
    }
    store.close().await;
}

async fn history_queries_match_the_protocol(fx: Fixture) {
    let (deliver, _) = recorder();
    let store = fx.open(deliver, unbounded()).await;

    // A channel never published to has offset 0 and an epoch that stays.
    let empty = store.history("new", all(), unbounded()).await.unwrap();
    assert_eq!(empty.position.offset, 0);
    assert!(empty.publications.is_empty());
    let again = store.history("new", all(), unbounded()).await.unwrap();
    assert_eq!(again.position, empty.position);
    let p = store
        .append(publication("new", 1), unbounded())
        .await
        .unwrap();
    assert_eq!((p.offset, epoch_of(&p)), (1, empty.position.epoch.clone()));

    for n in 1..=10 {
        store
            .append(publication("h", n), unbounded())
            .await
            .unwrap();
    }
    let epoch = store
        .history("h", all(), unbounded())
        .await
        .unwrap()
        .position
        .epoch;
    let since = |offset| {
        Some(StreamPosition {
            offset,
            epoch: epoch.clone(),
        })
    };
    let cases: Vec<(HistoryQuery, Vec<u64>)> = vec![
        (HistoryQuery::default(), vec![]),
        (q(None, Some(3), false), vec![1, 2, 3]),
        (q(None, Some(3), true), vec![10, 9, 8]),
        (q(since(7), Some(100), false), vec![8, 9, 10]),
        (q(since(7), Some(2), false), vec![8, 9]),
        (q(since(4), Some(100), true), vec![3, 2, 1]),
        (q(since(4), Some(2), true), vec![3, 2]),
        (q(since(10), Some(5), false), vec![]),
        (q(None, Some(0), false), vec![]),
    ];
    for (i, (query, want)) in cases.into_iter().enumerate() {
        let page = store.history("h", query, unbounded()).await.unwrap();
        assert_eq!(page.position.offset, 10, "case {i}");
        assert_eq!(offsets(&page), want, "case {i}");
    }
    let stale = HistoryQuery {
        since: Some(StreamPosition {
            offset: 1,
            epoch: "stale".into(),
        }),
        limit: Some(10),
        reverse: false,
    };
    let err = store.history("h", stale, unbounded()).await.unwrap_err();
    assert!(matches!(err, StoreError::Unrecoverable), "{err:?}");
    store.close().await;
}

fn q(since: Option<StreamPosition>, limit: Option<usize>, reverse: bool) -> HistoryQuery {
    HistoryQuery {
        since,
        limit,
        reverse,
    }
}

async fn remove_keeps_the_position(fx: Fixture) {
    let (deliver, _) = recorder();
    let store = fx.open(deliver, unbounded()).await;
    for n in 1..=3 {
        store
            .append(publication("r", n), unbounded())
            .await
            .unwrap();
    }
    let before = store
        .history("r", all(), unbounded())
        .await
        .unwrap()
        .position;
    store.remove("r").await.unwrap();
    let page = store.history("r", all(), unbounded()).await.unwrap();
    assert!(page.publications.is_empty());
    assert_eq!(page.position, before);
    let p = store
        .append(publication("r", 4), unbounded())
        .await
        .unwrap();
    assert_eq!((p.offset, epoch_of(&p)), (4, before.epoch));
    store.close().await;
}

async fn retention_trims_by_size_and_ttl(fx: Fixture) {
    let (deliver, _) = recorder();
    let opts_for = Arc::new(|channel: &str| match channel {
        "sized" => StreamOptions {
            size: 2,
            ..Default::default()
        },
        "timed" => StreamOptions {
            ttl: Duration::from_millis(300),
            ..Default::default()
        },
        _ => StreamOptions::default(),
    });
    let fx = fx.with(|s| s.retention_interval = Dur::millis(50));
    let store = fx.open_with(deliver, opts_for).await;
    for n in 1..=5 {
        store
            .append(publication("sized", n), unbounded())
            .await
            .unwrap();
        store
            .append(publication("timed", n), unbounded())
            .await
            .unwrap();
        store
            .append(publication("kept", n), unbounded())
            .await
            .unwrap();
    }
    // 3 trimmed by size at once; all 5 timed ones once they are 300ms old.
    wait_until("retention removed 8", || store.removed_total() >= 8).await;
    assert_eq!(store.removed_total(), 8);
    let history = |ch: &'static str| store.history(ch, all(), unbounded());
    assert_eq!(offsets(&history("sized").await.unwrap()), vec![4, 5]);
    let timed = history("timed").await.unwrap();
    assert!(timed.publications.is_empty());
    assert_eq!(timed.position.offset, 5);
    assert_eq!(
        offsets(&history("kept").await.unwrap()),
        vec![1, 2, 3, 4, 5]
    );
    store.close().await;
}

async fn reads_apply_retention_before_the_task_runs(fx: Fixture) {
    let (deliver, _) = recorder();
    let store = fx.open(deliver, unbounded()).await;
    for n in 1..=5 {
        store
            .append(publication("w", n), unbounded())
            .await
            .unwrap();
    }
    let sized = StreamOptions {
        size: 2,
        ..Default::default()
    };
    let page = store.history("w", all(), sized).await.unwrap();
    assert_eq!(offsets(&page), vec![4, 5]);
    let reverse = q(None, Some(10), true);
    assert_eq!(
        offsets(&store.history("w", reverse, sized).await.unwrap()),
        vec![5, 4]
    );
    // Time must pass: the publications have to age past the TTL below.
    tokio::time::sleep(Duration::from_millis(20)).await;
    let expired = StreamOptions {
        ttl: Duration::from_millis(10),
        ..Default::default()
    };
    let page = store.history("w", all(), expired).await.unwrap();
    assert!(page.publications.is_empty());
    assert_eq!(page.position.offset, 5);
    assert_eq!(store.removed_total(), 0, "reads do not delete");
    store.close().await;
}

async fn reopening_keeps_epochs_and_offsets(fx: Fixture) {
    let (deliver, _) = recorder();
    let store = fx.open(deliver.clone(), unbounded()).await;
    let mut epoch = String::new();
    for n in 1..=3 {
        let p = store
            .append(publication("p", n), unbounded())
            .await
            .unwrap();
        epoch = epoch_of(&p);
    }
    store.close().await;
    let err = store
        .append(publication("p", 9), unbounded())
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::Closed), "{err:?}");
    drop(store);

    let store = fx.open(deliver, unbounded()).await;
    let page = store.history("p", all(), unbounded()).await.unwrap();
    assert_eq!(
        page.position,
        StreamPosition {
            offset: 3,
            epoch: epoch.clone()
        }
    );
    assert_eq!(offsets(&page), vec![1, 2, 3]);
    let p = store
        .append(publication("p", 4), unbounded())
        .await
        .unwrap();
    assert_eq!((p.offset, epoch_of(&p)), (4, epoch));
    store.close().await;
}

async fn failed_commits_acknowledge_and_deliver_nothing(fx: Fixture) {
    let (deliver, seen) = recorder();
    let store = Arc::new(fx.open(deliver, unbounded()).await);
    store
        .append(publication("f", 1), unbounded())
        .await
        .unwrap();
    // Offset 2 taken behind the store's back: every batch with "f" fails.
    fx.execute("INSERT INTO publications (channel, seq, data, created_at) VALUES ('f', 2, '0', 0)")
        .await;
    let appends: Vec<_> = (0..5)
        .map(|n| {
            let store = store.clone();
            tokio::spawn(async move { store.append(publication("f", n), unbounded()).await })
        })
        .collect();
    for append in appends {
        let err = append.await.unwrap().unwrap_err();
        assert!(matches!(err, StoreError::Commit(_)), "{err:?}");
    }
    assert_eq!(*seen.lock(), vec![("f".to_string(), 1)]);
    // The failed batches gave their offsets back.
    fx.execute("DELETE FROM publications WHERE channel = 'f' AND seq = 2")
        .await;
    let p = store
        .append(publication("f", 2), unbounded())
        .await
        .unwrap();
    assert_eq!(p.offset, 2);
    let page = store.history("f", all(), unbounded()).await.unwrap();
    assert_eq!(offsets(&page), vec![1, 2]);
    store.close().await;
}

/// A publisher that stops waiting (its `storage.timeout` passed, or it
/// went away) while its publication is still queued behind a commit: the
/// publication is never committed — it was never acknowledged — and the
/// stream goes on at the next offset.
async fn a_publication_given_up_while_queued_is_not_committed(fx: Fixture) {
    let (deliver, seen) = recorder();
    let store = Arc::new(fx.open(deliver, unbounded()).await);
    let held = fx.hold_writes().await;
    let first = tokio::spawn({
        let store = store.clone();
        async move { store.append(publication("q", 1), unbounded()).await }
    });
    // The first is being committed (waiting for the lock) while the second
    // waits in the queue, and its publisher gives up.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let given_up = tokio::time::timeout(
        Duration::from_millis(100),
        store.append(publication("q", 2), unbounded()),
    )
    .await;
    assert!(given_up.is_err(), "answered while writes were held");
    held.release().await;
    assert_eq!(first.await.unwrap().unwrap().offset, 1);
    let third = store
        .append(publication("q", 3), unbounded())
        .await
        .unwrap();
    assert_eq!(third.offset, 2);
    let page = store.history("q", all(), unbounded()).await.unwrap();
    let data: Vec<&[u8]> = page.publications.iter().map(|p| &p.data[..]).collect();
    assert_eq!(data, [&b"1"[..], &b"3"[..]]);
    assert_eq!(
        *seen.lock(),
        vec![("q".to_string(), 1), ("q".to_string(), 2)]
    );
    store.close().await;
}

/// Reading streams that were never published to writes nothing, and each
/// is reported in the epoch its first publication then creates it in, so
/// a subscriber's position stays valid; the epoch survives a reopening.
async fn reading_streams_that_do_not_exist_creates_nothing(fx: Fixture) {
    let (deliver, _) = recorder();
    let store = fx.open(deliver.clone(), unbounded()).await;
    let mut epochs = Vec::new();
    for i in 0..200 {
        let page = store
            .history(&format!("never{i}"), all(), unbounded())
            .await
            .unwrap();
        assert_eq!(page.position.offset, 0);
        assert!(page.publications.is_empty());
        epochs.push(page.position.epoch);
    }
    assert_eq!(fx.count("SELECT COUNT(*) FROM streams").await, 0, "no rows");
    store.remove("never0").await.unwrap();
    assert_eq!(fx.count("SELECT COUNT(*) FROM streams").await, 0);
    let first = store
        .append(publication("never7", 1), unbounded())
        .await
        .unwrap();
    assert_eq!((first.offset, epoch_of(&first)), (1, epochs[7].clone()));
    store.close().await;
    let store = fx.open(deliver, unbounded()).await;
    let page = store.history("never8", all(), unbounded()).await.unwrap();
    assert_eq!(page.position.epoch, epochs[8], "the same after reopening");
    store.close().await;
}

/// A publication the database refuses fails alone: the others of its batch
/// are committed, in order, and delivered; one a text column cannot hold is
/// refused before it joins a batch.
async fn a_refused_publication_fails_alone(fx: Fixture) {
    let (deliver, seen) = recorder();
    let fx = fx.with(|s| s.batch_max_size = 64);
    let store = Arc::new(fx.open(deliver, unbounded()).await);
    for channel in ["f", "g"] {
        store
            .append(publication(channel, 1), unbounded())
            .await
            .unwrap();
    }
    // Offset 2 of "f" taken behind the store's back: any batch holding a
    // publication of "f" is refused by the database.
    fx.execute("INSERT INTO publications (channel, seq, data, created_at) VALUES ('f', 2, '0', 0)")
        .await;
    let nul_user = Arc::new(ClientInfo {
        user: "a\0b".into(),
        ..Default::default()
    });
    let appends: Vec<_> = (0..40u64)
        .map(|n| {
            let store = store.clone();
            let p = match n % 8 {
                3 => publication("f", n),
                5 => Publication::new(Arc::from("g"), Bytes::from("1"), Some(nul_user.clone())),
                _ => publication("g", n),
            };
            tokio::spawn(async move { (n, store.append(p, unbounded()).await) })
        })
        .collect();
    let mut g_offsets = Vec::new();
    for append in appends {
        let (n, result) = append.await.unwrap();
        match (n % 8, result) {
            (3, Err(StoreError::Commit(_))) => {}
            (5, Err(StoreError::Invalid(_))) => {}
            (_, Ok(p)) if n % 8 != 3 && n % 8 != 5 => g_offsets.push(p.offset),
            (_, other) => panic!("publication {n}: {other:?}"),
        }
    }
    g_offsets.sort_unstable();
    assert_eq!(g_offsets, (2..=31).collect::<Vec<_>>());
    let delivered: Vec<u64> = seen
        .lock()
        .iter()
        .filter(|(c, _)| c == "g")
        .map(|(_, o)| *o)
        .collect();
    assert_eq!(delivered, (1..=31).collect::<Vec<_>>(), "in order, once");
    let page = store.history("g", all(), unbounded()).await.unwrap();
    assert_eq!(offsets(&page), (1..=31).collect::<Vec<_>>());
    store.close().await;
}

fn once(key: &str) -> Conditions {
    Conditions {
        once: Some(Once {
            key: key.into(),
            window: KEY_WINDOW,
        }),
        version: None,
    }
}

fn versioned(version: u64, epoch: &str) -> Conditions {
    Conditions {
        once: None,
        version: Some(Version {
            version,
            epoch: epoch.into(),
        }),
    }
}

/// Publications with an idempotency key are appended once per channel and
/// key, however their retries arrive (in one batch, in later ones, after
/// the store was reopened), and every retry gets the first one's position.
async fn keyed_appends_publish_once_even_after_a_restart(fx: Fixture) {
    let (deliver, seen) = recorder();
    let store = Arc::new(fx.open(deliver.clone(), unbounded()).await);
    let first = store
        .append_if(publication("k", 0), unbounded(), once("a"))
        .await
        .unwrap();
    assert_eq!(first.offset, 1);
    // Retries of "b" together with other publications: the same key twice
    // in a batch, and in batches after the first one committed.
    let appends: Vec<_> = (0..30u64)
        .map(|n| {
            let store = store.clone();
            tokio::spawn(async move {
                let p = publication("k", n);
                match n % 3 {
                    0 => Some(store.append_if(p, unbounded(), once("b")).await),
                    1 => {
                        let key = format!("c{n}");
                        Some(store.append_if(p, unbounded(), once(&key)).await)
                    }
                    _ => store.append(p, unbounded()).await.map(|_| None).transpose(),
                }
            })
        })
        .collect();
    let mut b_positions = Vec::new();
    for append in appends {
        if let Some(result) = append.await.unwrap() {
            let position = result.unwrap();
            assert_eq!(position.epoch, first.epoch);
            b_positions.push(position.offset);
        }
    }
    let page = store.history("k", all(), unbounded()).await.unwrap();
    // "a", one "b", ten "c"s and ten without a key.
    assert_eq!(offsets(&page), (1..=22).collect::<Vec<_>>());
    assert_eq!(seen.lock().len(), 22, "each delivered once");
    let number =
        |p: &Publication| -> u64 { std::str::from_utf8(&p.data).unwrap().parse().unwrap() };
    let b_stored: Vec<_> = page.publications[1..]
        .iter()
        .filter(|p| number(p) % 3 == 0)
        .map(|p| p.offset)
        .collect();
    assert_eq!(
        b_stored.len(),
        1,
        "one publication with key b: {b_stored:?}"
    );
    let b_offset = b_stored[0];
    // Every retry of "b" got where the one stored stands, c's their own.
    let b_count = b_positions.iter().filter(|o| **o == b_offset).count();
    assert_eq!(b_count, 10, "{b_positions:?}");
    store.close().await;
    drop(store);

    let store = fx.open(deliver, unbounded()).await;
    for (key, offset) in [("a", 1), ("b", b_offset)] {
        let again = store
            .append_if(publication("k", 99), unbounded(), once(key))
            .await
            .unwrap();
        assert_eq!(
            again,
            StreamPosition {
                offset,
                epoch: first.epoch.clone()
            }
        );
    }
    // The same key in another channel is another publication.
    let other = store
        .append_if(publication("l", 1), unbounded(), once("a"))
        .await
        .unwrap();
    assert_eq!(other.offset, 1);
    let page = store.history("k", all(), unbounded()).await.unwrap();
    assert_eq!(page.position.offset, 22, "nothing appended by retries");
    // A key a text column cannot hold is refused alone.
    let err = store
        .append_if(publication("k", 1), unbounded(), once("a\0b"))
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::Invalid(_)), "{err:?}");
    store.close().await;
}

/// A key whose window ended publishes again (its old row is replaced), and
/// retention deletes ended keys.
async fn ended_keys_publish_again_and_are_forgotten(fx: Fixture) {
    let fx = fx.with(|s| s.retention_interval = Dur::millis(50));
    let (deliver, _) = recorder();
    let window = Duration::from_millis(300);
    let opts_for = Arc::new(|_: &str| unbounded());
    let store = open_durable(&fx.storage, fx.dir.path(), deliver, opts_for, window)
        .await
        .unwrap();
    let short = Conditions {
        once: Some(Once {
            key: "s".into(),
            window,
        }),
        version: None,
    };
    let first = store
        .append_if(publication("e", 1), unbounded(), short.clone())
        .await
        .unwrap();
    let again = store
        .append_if(publication("e", 2), unbounded(), short.clone())
        .await
        .unwrap();
    assert_eq!((first.offset, again.offset), (1, 1));
    // The window ends (retention may or may not have run yet).
    tokio::time::sleep(window + Duration::from_millis(50)).await;
    let after = store
        .append_if(publication("e", 3), unbounded(), short.clone())
        .await
        .unwrap();
    assert_eq!(after.offset, 2);
    // The renewed key holds its new window…
    let again = store
        .append_if(publication("e", 4), unbounded(), short)
        .await
        .unwrap();
    assert_eq!(again.offset, 2);
    // …and is then deleted by retention.
    eventually("retention to delete the ended key", || async {
        fx.count("SELECT COUNT(*) FROM idempotency").await == 0
    })
    .await;
    store.close().await;
}

/// A publication whose version is not above its stream's last (in the same
/// version epoch) is not appended, among unversioned publications and
/// across a reopening; the position answered is the stream's.
async fn stale_versions_are_not_appended(fx: Fixture) {
    let (deliver, seen) = recorder();
    let store = Arc::new(fx.open(deliver.clone(), unbounded()).await);
    let at = |r: Result<StreamPosition, StoreError>| r.unwrap().offset;
    let v = |n| store.append_if(publication("v", n), unbounded(), versioned(n, ""));
    assert_eq!(at(v(5).await), 1);
    assert_eq!(at(v(5).await), 1, "as old: not appended");
    assert_eq!(at(v(4).await), 1, "older: not appended");
    // Versioned and unversioned publications queued together (polled in
    // order, so queued in order): each versioned one is compared in turn.
    let appends = (0..20u64).map(|n| {
        let store = store.clone();
        async move {
            if n % 2 == 0 {
                let version = versioned(6 + n / 2, "");
                store
                    .append_if(publication("v", n), unbounded(), version)
                    .await
            } else {
                let p = store.append(publication("v", n), unbounded()).await?;
                Ok(StreamPosition {
                    offset: p.offset,
                    epoch: epoch_of(&p),
                })
            }
        }
    });
    let got: Vec<u64> = futures_util::future::join_all(appends)
        .await
        .into_iter()
        .map(|r| r.unwrap().offset)
        .collect();
    assert_eq!(got, (2..=21).collect::<Vec<_>>(), "in the order queued");
    let page = store.history("v", all(), unbounded()).await.unwrap();
    assert_eq!(page.position.offset, 21, "every newer version and the rest");
    store.close().await;
    drop(store);

    let store = fx.open(deliver, unbounded()).await;
    let stale = store
        .append_if(publication("v", 99), unbounded(), versioned(15, ""))
        .await
        .unwrap();
    assert_eq!(stale.offset, 21, "the version survived the reopening");
    let other_epoch = store
        .append_if(publication("v", 99), unbounded(), versioned(1, "e2"))
        .await
        .unwrap();
    assert_eq!(other_epoch.offset, 22, "a new version epoch starts over");
    // With a key: a stale version keeps no key, so a newer retry appends.
    let both = |version| Conditions {
        once: once("k").once,
        version: Some(Version {
            version,
            epoch: "e2".into(),
        }),
    };
    let stale = store
        .append_if(publication("v", 100), unbounded(), both(1))
        .await
        .unwrap();
    assert_eq!(stale.offset, 22);
    let newer = store
        .append_if(publication("v", 101), unbounded(), both(2))
        .await
        .unwrap();
    assert_eq!(newer.offset, 23);
    assert_eq!(seen.lock().len(), 23);
    store.close().await;
}

/// Two nodes appending to the same PostgreSQL streams share one sequence of
/// offsets per channel: together gap-free, never reused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_nodes_share_gap_free_offsets() {
    let Some(fx) = Fixture::postgres() else {
        return;
    };
    {
        let nodes = [
            Arc::new(fx.open(recorder().0, unbounded()).await),
            Arc::new(fx.open(recorder().0, unbounded()).await),
        ];
        let tasks: Vec<_> = (0..16)
            .map(|t| {
                let store = nodes[t % 2].clone();
                tokio::spawn(async move {
                    let mut got = Vec::new();
                    for n in 0..25 {
                        let channel = format!("n{}", (t as u64 + n) % 2);
                        let p = store
                            .append(publication(&channel, n), unbounded())
                            .await
                            .unwrap();
                        got.push((channel, p.offset, epoch_of(&p)));
                    }
                    got
                })
            })
            .collect();
        let mut offsets: HashMap<String, Vec<u64>> = HashMap::new();
        let mut epochs: HashMap<String, String> = HashMap::new();
        for task in tasks {
            for (channel, offset, epoch) in task.await.unwrap() {
                let first = epochs
                    .entry(channel.clone())
                    .or_insert_with(|| epoch.clone());
                assert_eq!(*first, epoch, "one epoch per stream across nodes");
                offsets.entry(channel).or_default().push(offset);
            }
        }
        for (channel, mut got) in offsets {
            got.sort_unstable();
            assert_eq!(got, (1..=got.len() as u64).collect::<Vec<_>>(), "{channel}");
        }
        for node in nodes {
            node.close().await;
        }
    }
}

/// Retries of one key on two nodes sharing a PostgreSQL database store one
/// publication, and every retry gets its position.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_nodes_share_idempotency_keys() {
    let Some(fx) = Fixture::postgres() else {
        return;
    };
    let nodes = [
        Arc::new(fx.open(recorder().0, unbounded()).await),
        Arc::new(fx.open(recorder().0, unbounded()).await),
    ];
    for round in 0..5 {
        let key = format!("k{round}");
        let tasks: Vec<_> = (0..8u64)
            .map(|n| {
                let store = nodes[n as usize % 2].clone();
                let key = key.clone();
                tokio::spawn(async move {
                    let p = publication("shared", n);
                    store.append_if(p, unbounded(), once(&key)).await.unwrap()
                })
            })
            .collect();
        let mut positions = Vec::new();
        for task in tasks {
            positions.push(task.await.unwrap());
        }
        assert!(
            positions.iter().all(|p| *p == positions[0]),
            "round {round}: {positions:?}"
        );
        assert_eq!(positions[0].offset, round + 1);
    }
    let page = nodes[0]
        .history("shared", all(), unbounded())
        .await
        .unwrap();
    assert_eq!(offsets(&page), vec![1, 2, 3, 4, 5]);
    for node in nodes {
        node.close().await;
    }
}

#[tokio::test]
async fn corrupt_sqlite_file_is_an_error_naming_it() {
    let fx = Fixture::sqlite();
    let garbage: Vec<u8> = (0..8192u32).map(|i| (i * 7 + 13) as u8).collect();
    std::fs::write(fx.sqlite_file(), garbage).unwrap();
    let (deliver, _) = recorder();
    let opts = Arc::new(|_: &str| StreamOptions::default());
    let result = open_durable(&fx.storage, fx.dir.path(), deliver, opts, KEY_WINDOW).await;
    match result {
        Err(e @ StoreError::Open { .. }) => {
            let file = fx.sqlite_file().display().to_string();
            assert!(e.to_string().contains(&file), "{e}");
            let cause = std::error::Error::source(&e).expect("the cause is kept");
            assert!(cause.to_string().contains("not a database"), "{cause}");
        }
        Err(other) => panic!("unexpected error {other:?}"),
        Ok(_) => panic!("opened a corrupt file"),
    }
    // The file was left alone, not reset.
    let after = std::fs::read(fx.sqlite_file()).unwrap();
    assert_eq!(after.len(), 8192);
}

#[tokio::test]
async fn sqlite_file_is_created_under_the_data_dir() {
    let fx = Fixture::sqlite();
    let nested = fx.dir.path().join("a/b");
    let (deliver, _) = recorder();
    let opts = Arc::new(|_: &str| StreamOptions::default());
    let store = open_durable(&fx.storage, &nested, deliver, opts, KEY_WINDOW)
        .await
        .unwrap();
    store
        .append(publication("x", 1), unbounded())
        .await
        .unwrap();
    store.close().await;
    assert!(nested.join("streams.db").is_file());
}

/// Access rules kept in the database: saved, loaded by a node that opens
/// the database later, replaced by what storage holds at each reload (which
/// reports the rules new to the node), ended ones deleted; a change heard
/// while storage was read is not undone by that read.
async fn access_rules_persist_and_reload(f: Fixture) {
    use herald::access::{Access, Denied};
    use herald::config::{AccessConfig, AccessStorage, AccessStorageType};
    use herald::store::AccessRules;
    use herald::wire::control::AccessChange;

    let database = AccessStorage {
        storage_type: AccessStorageType::Database,
    };
    let config = AccessConfig {
        user_block: database,
        token_revoke: database,
        user_tokens_invalidate: database,
    };
    let (deliver, _) = recorder();
    let store: Arc<dyn AccessRules> = Arc::new(f.open(deliver, StreamOptions::default()).await);
    let now = herald::auth::now_unix();
    let node_a = Access::persisted(config, store.clone()).await.unwrap();
    for change in [
        AccessChange::Block {
            user: "bob".into(),
            expire_at: 0,
        },
        AccessChange::Block {
            user: "gone".into(),
            expire_at: now + 60,
        },
        AccessChange::Unblock {
            user: "gone".into(),
        },
        AccessChange::Block {
            user: "ended".into(),
            expire_at: now - 1,
        },
        AccessChange::RevokeToken {
            uid: "t1".into(),
            expire_at: now + 60,
        },
    ] {
        node_a.save_and_apply(&change).await.unwrap();
    }
    assert_eq!(node_a.check_connection("bob", None), Err(Denied::Blocked));

    // Another node opening the same database later.
    let node_b = Access::persisted(config, store.clone()).await.unwrap();
    assert_eq!(node_b.check_connection("bob", None), Err(Denied::Blocked));
    assert_eq!(node_b.check_connection("gone", None), Ok(()));
    let t1 = herald::auth::TokenId {
        jti: Some("t1".into()),
        iat: None,
    };
    assert_eq!(
        node_b.check_connection("x", Some(&t1)),
        Err(Denied::Revoked)
    );
    assert_eq!(
        f.count("SELECT COUNT(*) FROM access_rules").await,
        2,
        "the ended block was deleted"
    );

    // A rule saved by node A after node B loaded reaches B at its reload,
    // reported as new; an unblock does too.
    let carol = AccessChange::Block {
        user: "carol".into(),
        expire_at: 0,
    };
    node_a.save_and_apply(&carol).await.unwrap();
    node_a
        .save_and_apply(&AccessChange::Unblock { user: "bob".into() })
        .await
        .unwrap();
    assert_eq!(node_b.reload().await.unwrap(), vec![carol.clone()]);
    assert_eq!(node_b.check_connection("carol", None), Err(Denied::Blocked));
    assert_eq!(node_b.check_connection("bob", None), Ok(()));
    assert!(node_b.reload().await.unwrap().is_empty(), "nothing new");
}

/// The webhook event queue on its own: holders decide first and last
/// across nodes, a vanished node is released with the events it leaves
/// behind (and so is a node that leaves), claims keep events from a second
/// claimer, only the claimer settles, outcomes settle.
async fn webhook_queue_holds_claims_and_sweeps(f: Fixture) {
    use herald::store::event_queue::{Change, EventQueue, HolderKind, NewEvent, Settled};

    let (deliver, _) = recorder();
    let store = f.open(deliver, StreamOptions::default()).await;
    let q: Arc<dyn EventQueue> = store.events();
    let event = |id: &str, name: &str| NewEvent {
        id: id.into(),
        hook: "app".into(),
        event: name.into(),
        body: format!(r#"{{"id":"{id}"}}"#),
    };
    let hold = |key: &str, add: bool, id: &str| Change::Hold {
        kind: HolderKind::User,
        key: key.into(),
        add,
        events: vec![event(id, if add { "user_online" } else { "user_offline" })],
    };
    let now = 1_000_000;
    assert!(!q.heartbeat("a", now).await.unwrap(), "a new node");
    assert!(q.heartbeat("a", now).await.unwrap(), "known now");
    q.heartbeat("b", now).await.unwrap();
    q.heartbeat("c", now).await.unwrap();
    // ann comes on node a (online), then on b (nothing), leaves a (nothing).
    assert_eq!(
        q.record("a", &[hold("ann", true, "on1")], now)
            .await
            .unwrap(),
        1
    );
    assert_eq!(
        q.record("b", &[hold("ann", true, "on2")], now)
            .await
            .unwrap(),
        0
    );
    assert_eq!(
        q.record("a", &[hold("ann", false, "off1")], now)
            .await
            .unwrap(),
        0
    );
    // c holds bo and leaves cleanly: bo goes offline with it.
    assert_eq!(
        q.record("c", &[hold("bo", true, "on3")], now)
            .await
            .unwrap(),
        1
    );
    let left = |kind: HolderKind, key: &str, node: &str| {
        assert_eq!((kind, key, node), (HolderKind::User, "bo", "c"));
        vec![event("off-c", "user_offline")]
    };
    q.leave("c", now, &left).await.unwrap();
    // b vanishes: its heartbeat goes stale while a's is fresh.
    q.heartbeat("a", now + 120_000).await.unwrap();
    let orphaned = |kind: HolderKind, key: &str, node: &str| {
        assert_eq!((kind, key, node), (HolderKind::User, "ann", "b"));
        vec![event("off-b", "user_offline")]
    };
    assert_eq!(
        q.sweep(now + 60_000, now + 120_000, &orphaned)
            .await
            .unwrap(),
        1
    );
    assert_eq!(
        q.sweep(now + 60_000, now + 120_000, &orphaned)
            .await
            .unwrap(),
        0,
        "released once"
    );
    assert!(
        !q.heartbeat("b", now + 130_000).await.unwrap(),
        "b learns it was let go"
    );

    // Four events are due: one claimer gets them, a second none.
    let claimed = q
        .claim("a", now + 130_000, now + 200_000, 10)
        .await
        .unwrap();
    let mut ids: Vec<&str> = claimed.iter().map(|c| c.id.as_str()).collect();
    ids.sort();
    assert_eq!(ids, ["off-b", "off-c", "on1", "on3"]);
    assert!(q
        .claim("b", now + 130_000, now + 200_000, 10)
        .await
        .unwrap()
        .is_empty());
    // Only the claimer's outcome counts.
    q.settle("b", &[Settled::Delivered { id: "on1".into() }])
        .await
        .unwrap();
    assert_eq!(q.counts().await.unwrap(), (4, 0));
    q.settle(
        "a",
        &[
            Settled::Delivered { id: "on1".into() },
            Settled::Delivered { id: "on3".into() },
            Settled::Delivered { id: "off-c".into() },
            Settled::Dead {
                id: "off-b".into(),
                error: "HTTP status 500".into(),
            },
        ],
    )
    .await
    .unwrap();
    assert_eq!(q.counts().await.unwrap(), (0, 1));
    // Events recorded again (the first recording committed, but its answer
    // came too late) are kept once.
    let twice = [Change::Events(vec![event("again", "connect")])];
    for _ in 0..2 {
        assert_eq!(q.record("a", &twice, now).await.unwrap(), 1);
    }
    assert_eq!(q.counts().await.unwrap(), (1, 1));
    let claimed = q
        .claim("a", now + 130_000, now + 135_000, 10)
        .await
        .unwrap();
    assert_eq!(claimed.len(), 1);
    q.settle("a", &[Settled::Delivered { id: "again".into() }])
        .await
        .unwrap();
    assert_eq!(q.counts().await.unwrap(), (0, 1));
    let dead = q.dead_letters("", 10).await.unwrap();
    assert_eq!(dead.len(), 1);
    assert_eq!(
        (dead[0].attempts, dead[0].last_error.as_str()),
        (1, "HTTP status 500")
    );
    assert_eq!(q.redrive(&[], "other", now + 140_000).await.unwrap(), 0);
    assert_eq!(
        q.redrive(&["off-b".into()], "", now + 140_000)
            .await
            .unwrap(),
        1
    );
    assert_eq!(q.counts().await.unwrap(), (1, 0));
    // A retry is due again when it says.
    let claimed = q
        .claim("a", now + 140_000, now + 150_000, 10)
        .await
        .unwrap();
    assert_eq!(claimed.len(), 1);
    let retry = Settled::Retry {
        id: "off-b".into(),
        next_at: now + 160_000,
        error: "no answer".into(),
    };
    q.settle("a", &[retry]).await.unwrap();
    assert!(q
        .claim("a", now + 150_000, now + 170_000, 10)
        .await
        .unwrap()
        .is_empty());
    // A claim that was never settled (its node died) is released by
    // `recover` where the database is the node's own, else by the lease.
    let claimed = q
        .claim("a", now + 160_000, now + 200_000, 10)
        .await
        .unwrap();
    assert_eq!(
        claimed[0].attempts, 1,
        "one failed attempt since the redrive"
    );
    q.recover().await.unwrap();
    let again = q
        .claim("d", now + 165_000, now + 300_000, 10)
        .await
        .unwrap();
    assert_eq!(again.len(), usize::from(f.postgres.is_none()));
    let after_lease = q
        .claim("d", now + 200_001, now + 400_000, 10)
        .await
        .unwrap();
    assert_eq!(again.len() + after_lease.len(), 1);
}
