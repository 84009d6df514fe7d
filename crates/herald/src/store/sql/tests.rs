use std::collections::BTreeMap;
use std::time::Duration;

use bytes::Bytes;
use herald_protocol::ClientInfo;

use super::rows::{NewRow, StoredRow};
use super::sqlite::{padded, ROWS_PER_STATEMENT};
use super::writer::{assign, back_offsets, counts};
use super::*;
use crate::store::new_epoch;

fn position(offset: u64) -> StreamPosition {
    StreamPosition {
        offset,
        epoch: "e".into(),
    }
}

fn query(since: Option<u64>, limit: Option<usize>, reverse: bool) -> HistoryQuery {
    HistoryQuery {
        since: since.map(position),
        limit,
        reverse,
    }
}

fn sized(size: usize) -> StreamOptions {
    StreamOptions {
        size,
        ..Default::default()
    }
}

/// since, limit, reverse, size, top → the range's (after, before, limit).
type RangeCase = (
    Option<u64>,
    Option<usize>,
    bool,
    usize,
    u64,
    Option<(i64, i64, i64)>,
);

#[test]
fn ranges_follow_select() {
    let cases: &[RangeCase] = &[
        (None, None, false, 0, 10, None),
        (None, Some(0), false, 0, 10, None),
        (None, Some(5), false, 0, 0, None),
        (None, Some(5), false, 0, 10, Some((0, 11, 5))),
        (None, Some(5), true, 0, 10, Some((0, 11, 5))),
        (Some(4), Some(5), false, 0, 10, Some((4, 11, 5))),
        (Some(4), Some(5), true, 0, 10, Some((0, 4, 5))),
        (Some(10), Some(5), false, 0, 10, None),
        (Some(1), Some(5), true, 0, 10, None),
        (Some(2), Some(5), false, 3, 10, Some((7, 11, 5))),
        (Some(9), Some(5), true, 3, 10, Some((7, 9, 5))),
        (Some(u64::MAX), Some(5), true, 0, 10, Some((0, 11, 5))),
        (
            None,
            Some(usize::MAX),
            false,
            0,
            10,
            Some((0, 11, i64::MAX)),
        ),
    ];
    for (i, &(since, limit, reverse, size, top, want)) in cases.iter().enumerate() {
        let got = Range::of(&query(since, limit, reverse), &position(top), &sized(size))
            .unwrap()
            .map(|r| (r.after, r.before, r.limit));
        assert_eq!(got, want, "case {i}");
    }
}

#[test]
fn epoch_mismatch_is_unrecoverable() {
    let q = HistoryQuery {
        since: Some(StreamPosition {
            offset: 1,
            epoch: "old".into(),
        }),
        limit: Some(1),
        reverse: false,
    };
    let got = Range::of(&q, &position(3), &StreamOptions::default());
    assert!(matches!(got, Err(StoreError::Unrecoverable)));
}

#[test]
fn ttl_sets_a_creation_cutoff() {
    let opts = StreamOptions {
        ttl: Duration::from_secs(60),
        ..Default::default()
    };
    let range = Range::of(&query(None, Some(1), false), &position(1), &opts)
        .unwrap()
        .unwrap();
    let expected = now_ms() - 60_000;
    assert!((range.since_ms - expected).abs() < 1000);
    assert_eq!(created_cutoff(&StreamOptions::default()), i64::MIN);
}

fn publication(channel: &str) -> Publication {
    Publication::new(Arc::from(channel), Bytes::from_static(b"1"), None)
}

#[test]
fn offsets_follow_batch_order_and_end_at_top() {
    let pubs: Vec<Publication> = ["b", "a", "b", "b", "a"].map(publication).into();
    assert_eq!(
        counts(&pubs).into_iter().collect::<Vec<_>>(),
        vec![("a", 2), ("b", 3)]
    );
    let tops = vec![
        ("a".to_string(), "ea".to_string(), 2),
        ("b".to_string(), "eb".to_string(), 10),
    ];
    let got = assign(&pubs, tops).unwrap();
    let want: Vec<(u64, Arc<str>)> = [(8, "eb"), (1, "ea"), (9, "eb"), (10, "eb"), (2, "ea")]
        .map(|(o, e)| (o, Arc::from(e)))
        .into();
    assert_eq!(got, want);
    // SQL computes the same offsets as top - back.
    assert_eq!(back_offsets(&pubs, &counts(&pubs)), vec![2, 1, 1, 0, 0]);
}

#[test]
fn rows_round_trip_client_info_and_tags() {
    let info = ClientInfo {
        user: "u".into(),
        client: "c".into(),
        conn_info: Some(Bytes::from_static(br#"{"a":1}"#)),
        chan_info: None,
    };
    let p = Publication::new(
        Arc::from("ch"),
        Bytes::from_static(b"{}"),
        Some(Arc::new(info)),
    )
    .with_tags(BTreeMap::from([("k".to_string(), "v".to_string())]));
    let row = NewRow::new(&p);
    let stored = StoredRow {
        seq: 7,
        data: row.data.to_vec(),
        info_user: row.info_user.map(Into::into),
        info_client: row.info_client.map(Into::into),
        conn_info: row.conn_info.map(Into::into),
        chan_info: row.chan_info.map(Into::into),
        tags: row.tags.clone(),
    };
    let back = stored.into_publication(&p.channel).unwrap();
    assert_eq!(back.offset, 7);
    assert_eq!(back.data, p.data);
    assert_eq!(back.info, p.info);
    assert_eq!(back.tags, p.tags);
}

#[test]
fn padding_rounds_up_to_a_power_of_two_within_the_statement_limit() {
    let shape = |n: usize| {
        let items = vec![0; n];
        let padded: Vec<_> = padded(&items).collect();
        (padded.len(), padded.iter().filter(|i| i.is_some()).count())
    };
    assert_eq!(shape(1), (1, 1));
    assert_eq!(shape(3), (4, 3));
    assert_eq!(shape(17), (32, 17));
    assert_eq!(shape(600), (ROWS_PER_STATEMENT, 600));
    assert_eq!(
        shape(ROWS_PER_STATEMENT),
        (ROWS_PER_STATEMENT, ROWS_PER_STATEMENT)
    );
}

/// One batch larger than a statement's rows, over several channels: every
/// publication is stored once, at the offset it was acknowledged with.
async fn large_batch_round_trips(storage: Storage, dir: &Path) {
    let deliver: Deliver = Arc::new(|_| Box::pin(async { Ok(()) }));
    let store = open_durable(
        &storage,
        dir,
        deliver,
        Arc::new(|_| StreamOptions::default()),
        Duration::from_secs(300),
    )
    .await
    .unwrap();
    let prefix = new_epoch();
    let channels: Vec<String> = (0..3).map(|i| format!("{prefix}-{i}")).collect();
    let n = ROWS_PER_STATEMENT * 2 + 100;
    let appends = (0..n).map(|i| {
        let channel = Arc::from(channels[i % 3].as_str());
        let data = Bytes::from(format!("{i}"));
        store.append(
            Publication::new(channel, data, None),
            StreamOptions::default(),
        )
    });
    // Queued together, so that the writer takes them in few batches.
    let acked = futures_util::future::try_join_all(appends).await.unwrap();
    let mut want: BTreeMap<(&str, u64), Bytes> = BTreeMap::new();
    for p in &acked {
        assert!(want
            .insert((&p.channel, p.offset), p.data.clone())
            .is_none());
    }
    for channel in &channels {
        let page = store
            .history(
                channel,
                query(None, Some(n), false),
                StreamOptions::default(),
            )
            .await
            .unwrap();
        let count = n / 3 + usize::from(channels[..n % 3].contains(channel));
        assert_eq!(page.publications.len(), count);
        assert_eq!(page.position.offset, count as u64);
        for (i, p) in page.publications.iter().enumerate() {
            assert_eq!(p.offset, i as u64 + 1);
            assert_eq!(Some(&p.data), want.get(&(channel.as_str(), p.offset)));
        }
    }
    store.close().await;
}

#[tokio::test]
async fn large_batches_round_trip_on_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    let storage = Storage {
        batch_max_size: 5000,
        ..Storage::default()
    };
    large_batch_round_trips(storage, dir.path()).await;
}

#[tokio::test]
async fn large_batches_round_trip_on_postgres() {
    let Ok(url) = std::env::var("HERALD_TEST_POSTGRES_URL") else {
        return;
    };
    let mut storage = Storage {
        kind: StorageKind::Postgres,
        batch_max_size: 5000,
        ..Storage::default()
    };
    storage.postgres.url = url.into();
    large_batch_round_trips(storage, Path::new(".")).await;
}
