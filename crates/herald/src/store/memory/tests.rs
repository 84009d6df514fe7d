use std::time::Duration;

use bytes::Bytes;
use parking_lot::Mutex;

use super::*;
use crate::store::{Once, Version};

fn store() -> (MemoryStore, Arc<Mutex<Vec<u64>>>) {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let s = seen.clone();
    let deliver: Deliver = Arc::new(move |p: Arc<Publication>| {
        s.lock().push(p.offset);
        Box::pin(async { Ok(()) })
    });
    (MemoryStore::new(deliver), seen)
}

fn publication(ch: &str, n: u32) -> Publication {
    Publication::new(Arc::from(ch), Bytes::from(n.to_string()), None)
}

/// The epoch a store set on a publication it appended.
fn epoch_of(p: &Publication) -> String {
    p.epoch
        .as_deref()
        .expect("appended with an epoch")
        .to_owned()
}

fn opts(size: usize) -> StreamOptions {
    StreamOptions {
        size,
        ttl: Duration::from_secs(60),
        meta_ttl: Duration::from_secs(3600),
    }
}

fn all() -> HistoryQuery {
    HistoryQuery {
        limit: Some(usize::MAX),
        ..Default::default()
    }
}

#[tokio::test]
async fn offsets_grow_and_window_is_bounded() {
    let (s, seen) = store();
    let mut epoch = String::new();
    for n in 1..=5 {
        let p = s.append(publication("c", n), opts(3)).await.unwrap();
        assert_eq!(p.offset, n as u64);
        epoch = epoch_of(&p);
    }
    assert_eq!(*seen.lock(), vec![1, 2, 3, 4, 5]);
    let page = s.history("c", all(), opts(3)).await.unwrap();
    assert_eq!(
        page.position,
        StreamPosition {
            offset: 5,
            epoch: epoch.clone()
        }
    );
    let offsets: Vec<u64> = page.publications.iter().map(|p| p.offset).collect();
    assert_eq!(offsets, vec![3, 4, 5]);
}

#[tokio::test]
async fn queries_since_limit_reverse() {
    let (s, _) = store();
    let mut epoch = String::new();
    for n in 1..=10 {
        epoch = epoch_of(&s.append(publication("c", n), opts(100)).await.unwrap());
    }
    let offsets = |page: HistoryPage| {
        page.publications
            .iter()
            .map(|p| p.offset)
            .collect::<Vec<_>>()
    };
    let q = |since: Option<u64>, limit: Option<usize>, reverse| HistoryQuery {
        since: since.map(|offset| StreamPosition {
            offset,
            epoch: epoch.clone(),
        }),
        limit,
        reverse,
    };
    assert_eq!(
        offsets(
            s.history("c", q(Some(7), Some(10), false), opts(100))
                .await
                .unwrap()
        ),
        vec![8, 9, 10]
    );
    assert_eq!(
        offsets(
            s.history("c", q(None, Some(2), false), opts(100))
                .await
                .unwrap()
        ),
        vec![1, 2]
    );
    assert_eq!(
        offsets(
            s.history("c", q(None, Some(2), true), opts(100))
                .await
                .unwrap()
        ),
        vec![10, 9]
    );
    assert_eq!(
        offsets(
            s.history("c", q(Some(3), Some(5), true), opts(100))
                .await
                .unwrap()
        ),
        vec![2, 1]
    );
    assert!(offsets(
        s.history("c", q(None, None, false), opts(100))
            .await
            .unwrap()
    )
    .is_empty());
    let wrong = HistoryQuery {
        since: Some(StreamPosition {
            offset: 1,
            epoch: "other".into(),
        }),
        limit: Some(1),
        reverse: false,
    };
    assert!(matches!(
        s.history("c", wrong, opts(100)).await,
        Err(StoreError::Unrecoverable)
    ));
}

#[tokio::test]
async fn ttl_and_meta_ttl() {
    let (s, _) = store();
    let short = StreamOptions {
        size: 10,
        ttl: Duration::from_millis(30),
        meta_ttl: Duration::from_millis(80),
    };
    let epoch = epoch_of(&s.append(publication("c", 1), short).await.unwrap());
    tokio::time::sleep(Duration::from_millis(50)).await;
    let page = s.history("c", all(), short).await.unwrap();
    assert!(page.publications.is_empty());
    assert_eq!(
        page.position.epoch, epoch,
        "position survives publication expiry"
    );
    tokio::time::sleep(Duration::from_millis(120)).await;
    s.sweep(|_| short);
    let page = s.history("c", all(), short).await.unwrap();
    assert_ne!(
        page.position.epoch, epoch,
        "an idle stream is forgotten with a new epoch"
    );
    assert_eq!(page.position.offset, 0);
}

#[tokio::test]
async fn remove_keeps_position() {
    let (s, _) = store();
    s.append(publication("c", 1), opts(10)).await.unwrap();
    s.remove("c").await.unwrap();
    let page = s.history("c", all(), opts(10)).await.unwrap();
    assert!(page.publications.is_empty());
    assert_eq!(page.position.offset, 1);
}

/// Reads of streams that were never published to keep nothing; each is
/// reported in the epoch its first publication creates it in, and a
/// stream created again after being forgotten gets another.
#[tokio::test]
async fn reads_create_nothing_and_epochs_stay_valid() {
    let (s, _) = store();
    let mut epochs = Vec::new();
    for i in 0..1000 {
        let page = s.history(&format!("c{i}"), all(), opts(10)).await.unwrap();
        assert_eq!(page.position.offset, 0);
        epochs.push(page.position.epoch);
    }
    assert!(s.streams.is_empty(), "no state for reads");
    let p = s.append(publication("c5", 1), opts(10)).await.unwrap();
    assert_eq!(
        epoch_of(&p),
        epochs[5],
        "a subscriber's position stays valid"
    );
    assert_eq!(s.streams.len(), 1);

    // Forgotten after an idle meta TTL, then created again: a new epoch,
    // whatever a reader saw in between.
    let short = StreamOptions {
        size: 10,
        ttl: Duration::from_secs(60),
        meta_ttl: Duration::from_millis(40),
    };
    let first = epoch_of(&s.append(publication("f", 1), short).await.unwrap());
    // Time must pass: the stream has to be idle longer than its meta TTL.
    tokio::time::sleep(Duration::from_millis(60)).await;
    s.sweep(|_| short);
    let again = s.append(publication("f", 1), short).await.unwrap();
    assert_eq!(again.offset, 1);
    assert_ne!(epoch_of(&again), first, "offsets start over in a new epoch");
}

#[tokio::test]
async fn keyed_appends_append_once_within_their_window() {
    let (s, seen) = store();
    let once = |key: &str, ms: u64| Conditions {
        once: Some(Once {
            key: key.into(),
            window: Duration::from_millis(ms),
        }),
        version: None,
    };
    let first = s
        .append_if(publication("c", 1), opts(10), once("k", 60_000))
        .await
        .unwrap();
    let again = s
        .append_if(publication("c", 2), opts(10), once("k", 60_000))
        .await
        .unwrap();
    assert_eq!(first, again);
    assert_eq!(first.offset, 1);
    // Another key, another channel: appended.
    let other = s
        .append_if(publication("c", 3), opts(10), once("j", 60_000))
        .await
        .unwrap();
    assert_eq!(other.offset, 2);
    let elsewhere = s
        .append_if(publication("d", 1), opts(10), once("k", 60_000))
        .await
        .unwrap();
    assert_eq!(elsewhere.offset, 1);
    // A key whose window ended appends again.
    s.append_if(publication("c", 4), opts(10), once("short", 10))
        .await
        .unwrap();
    // Time must pass: the window has to end.
    tokio::time::sleep(Duration::from_millis(20)).await;
    let renewed = s
        .append_if(publication("c", 5), opts(10), once("short", 10))
        .await
        .unwrap();
    assert_eq!(renewed.offset, 4);
    assert_eq!(*seen.lock(), vec![1, 2, 1, 3, 4]);
    let page = s.history("c", all(), opts(10)).await.unwrap();
    let data: Vec<_> = page.publications.iter().map(|p| p.data.clone()).collect();
    assert_eq!(
        data,
        ["1", "3", "4", "5"].map(|d| Bytes::from_static(d.as_bytes()))
    );
}

#[tokio::test]
async fn stale_versions_are_not_appended() {
    let (s, seen) = store();
    let v = |version: u64, epoch: &str| Conditions {
        once: None,
        version: Some(Version {
            version,
            epoch: epoch.into(),
        }),
    };
    let at = |p: StreamPosition| p.offset;
    assert_eq!(
        at(s.append_if(publication("c", 1), opts(10), v(2, ""))
            .await
            .unwrap()),
        1
    );
    // As old or older: not appended, the stream's top comes back.
    assert_eq!(
        at(s.append_if(publication("c", 2), opts(10), v(2, ""))
            .await
            .unwrap()),
        1
    );
    assert_eq!(
        at(s.append_if(publication("c", 3), opts(10), v(1, ""))
            .await
            .unwrap()),
        1
    );
    assert_eq!(
        at(s.append_if(publication("c", 4), opts(10), v(3, ""))
            .await
            .unwrap()),
        2
    );
    // Another version epoch starts over; the same epoch compares again.
    assert_eq!(
        at(s.append_if(publication("c", 5), opts(10), v(1, "b"))
            .await
            .unwrap()),
        3
    );
    assert_eq!(
        at(s.append_if(publication("c", 6), opts(10), v(1, "b"))
            .await
            .unwrap()),
        3
    );
    // Unversioned appends are not compared.
    assert_eq!(
        s.append(publication("c", 7), opts(10))
            .await
            .unwrap()
            .offset,
        4
    );
    assert_eq!(*seen.lock(), vec![1, 2, 3, 4]);
}
