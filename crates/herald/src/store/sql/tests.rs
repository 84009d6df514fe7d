use std::collections::BTreeMap;
use std::time::Duration;

use bytes::Bytes;
use herald_protocol::ClientInfo;

use super::rows::{NewRow, StoredRow};
use super::writer::{assign, counts};
use super::*;

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
    let want: Vec<(u64, String)> = [(8, "eb"), (1, "ea"), (9, "eb"), (10, "eb"), (2, "ea")]
        .map(|(o, e)| (o, e.to_string()))
        .into();
    assert_eq!(got, want);
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
    let row = NewRow::new(&p, 7);
    let stored = StoredRow {
        seq: row.seq,
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
