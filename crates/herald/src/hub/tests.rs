use std::sync::atomic::AtomicU64;

use parking_lot::Mutex;

use super::*;

#[derive(Default)]
struct Probe {
    key: u64,
    id: String,
    user: String,
    got: Mutex<Vec<Arc<Publication>>>,
    controls: Mutex<Vec<Control>>,
    presence: AtomicU64,
}

static NEXT: AtomicU64 = AtomicU64::new(1);

fn probe(user: &str) -> Arc<Probe> {
    let key = NEXT.fetch_add(1, Ordering::Relaxed);
    Arc::new(Probe {
        key,
        id: format!("c{key}"),
        user: user.into(),
        ..Default::default()
    })
}

impl Client for Probe {
    fn key(&self) -> u64 {
        self.key
    }
    fn client_id(&self) -> &str {
        &self.id
    }
    fn user(&self) -> &str {
        &self.user
    }
    fn deliver(&self, p: &Arc<Publication>) {
        self.got.lock().push(p.clone());
    }
    fn deliver_presence(&self, _: &Arc<PresenceEvent>) {
        self.presence.fetch_add(1, Ordering::Relaxed);
    }
    fn control(&self, c: Control) {
        self.controls.lock().push(c);
    }
}

fn publication(ch: &str) -> Arc<Publication> {
    Arc::new(Publication::new(
        Arc::from(ch),
        Bytes::from_static(b"{}"),
        None,
    ))
}

#[test]
fn fan_out_shares_one_publication() {
    let hub = Hub::new();
    let (a, b, c) = (probe("1"), probe("2"), probe("3"));
    assert!(hub.subscribe("news", a.clone(), false));
    assert!(!hub.subscribe("news", b.clone(), false));
    hub.subscribe("other", c.clone(), false);
    let p = publication("news");
    assert_eq!(hub.deliver(&p), 2);
    assert!(Arc::ptr_eq(&a.got.lock()[0], &b.got.lock()[0]));
    assert!(c.got.lock().is_empty());
    assert_eq!(hub.num_subscriptions(), 3);
    assert!(!hub.unsubscribe("news", a.key));
    assert!(hub.unsubscribe("news", b.key));
    assert_eq!(hub.deliver(&publication("news")), 0);
    assert_eq!(hub.num_channels(), 1);
}

#[test]
fn limits_per_node_and_user() {
    let hub = Hub::new();
    let (a1, a2, b) = (probe("a"), probe("a"), probe("b"));
    hub.add_client(a1.clone(), 2, 1).unwrap();
    assert_eq!(hub.add_client(a2.clone(), 2, 1), Err(Refused::UserLimit));
    hub.add_client(b.clone(), 2, 1).unwrap();
    assert_eq!(hub.add_client(probe("c"), 2, 1), Err(Refused::NodeLimit));
    assert_eq!(hub.num_clients(), 2);
    hub.remove_client(&*a1);
    hub.remove_client(&*a1);
    assert_eq!(hub.num_clients(), 1);
    hub.add_client(a2.clone(), 2, 1).unwrap();
    assert_eq!(hub.user_clients("a").len(), 1);
    assert_eq!(hub.client(a2.client_id()).unwrap().key(), a2.key);
    assert_eq!(hub.num_users(), 2);
}

#[test]
fn anonymous_connections_are_not_user_limited() {
    let hub = Hub::new();
    for _ in 0..3 {
        hub.add_client(probe(""), 0, 1).unwrap();
    }
    assert_eq!(hub.num_clients(), 3);
}

#[test]
fn presence_events_go_to_subscribers_that_asked() {
    let hub = Hub::new();
    let (a, b) = (probe("1"), probe("2"));
    hub.subscribe("room", a.clone(), true);
    hub.subscribe("room", b.clone(), false);
    let info = Arc::new(herald_protocol::ClientInfo::default());
    hub.deliver_presence(&Arc::new(PresenceEvent::new(Arc::from("room"), info, true)));
    assert_eq!(a.presence.load(Ordering::Relaxed), 1);
    assert_eq!(b.presence.load(Ordering::Relaxed), 0);
}

fn positioned(ch: &str, offset: u64) -> Arc<Publication> {
    Arc::new(
        Publication::new(Arc::from(ch), Bytes::from_static(b"{}"), None)
            .with_offset(offset)
            .with_epoch(Arc::from("e1")),
    )
}

fn offsets(p: &Probe) -> Vec<u64> {
    p.got.lock().iter().map(|p| p.offset).collect()
}

fn insufficient_count(p: &Probe) -> usize {
    p.controls
        .lock()
        .iter()
        .filter(|c| matches!(c, Control::Unsubscribe { code: 2500, .. }))
        .count()
}

/// The hub carries out what a channel's sequence decides: a gap without
/// a filler sends every subscriber to recover, once, and stale ones get
/// nothing more until they subscribe again.
#[test]
fn a_gap_in_offsets_stops_delivery_and_asks_for_recovery() {
    let hub = Hub::new();
    let (a, b) = (probe("1"), probe("2"));
    hub.subscribe("s", a.clone(), false);
    hub.deliver(&positioned("s", 1));
    hub.deliver(&positioned("s", 2));
    hub.subscribe("s", b.clone(), false);
    assert_eq!(hub.deliver(&positioned("s", 4)), 0);
    assert_eq!(hub.deliver(&positioned("s", 5)), 0);
    assert_eq!(offsets(&a), [1, 2]);
    assert!(offsets(&b).is_empty());
    assert_eq!((insufficient_count(&a), insufficient_count(&b)), (1, 1));
    hub.unsubscribe("s", a.key);
    hub.subscribe("s", a.clone(), false);
    assert_eq!(hub.deliver(&positioned("s", 3)), 0);
    assert_eq!(
        hub.deliver(&positioned("s", 6)),
        1,
        "b is stale until it leaves"
    );
    assert_eq!(offsets(&a), [1, 2, 6]);
    assert_eq!(hub.gap_counts(), (0, 1));

    // After a broker reconnection, positioned channels resync.
    let d = probe("4");
    hub.subscribe("u", d.clone(), false);
    hub.resync(|ch| ch == "u");
    assert_eq!(insufficient_count(&d), 1);
    assert_eq!(insufficient_count(&a), 1);
}

/// A filler that records the reads asked for.
fn recording_filler(hub: &Hub) -> Arc<Mutex<Vec<Fill>>> {
    let asked = Arc::new(Mutex::new(Vec::new()));
    let log = asked.clone();
    hub.set_filler(Arc::new(move |fill: Fill| log.lock().push(fill)), 100);
    asked
}

/// The latest read asked for, to finish.
fn last_fill(asked: &Mutex<Vec<Fill>>) -> Fill {
    asked.lock().last().cloned().expect("a read was asked for")
}

#[test]
fn a_gap_is_filled_through_the_filler_and_reads_go_on_until_caught_up() {
    let hub = Hub::new();
    let asked = recording_filler(&hub);
    let a = probe("1");
    hub.subscribe("s", a.clone(), false);
    hub.deliver(&positioned("s", 1));
    assert_eq!(hub.deliver(&positioned("s", 3)), 0);
    hub.deliver(&positioned("s", 4));
    hub.deliver(&positioned("s", 6));
    hub.finish_fill(
        last_fill(&asked),
        Some(vec![positioned("s", 2), positioned("s", 3)]),
    );
    assert_eq!(offsets(&a), [1, 2, 3, 4]);
    assert_eq!(asked.lock().len(), 2, "5 is read again");
    hub.finish_fill(last_fill(&asked), Some(vec![positioned("s", 5)]));
    assert_eq!(offsets(&a), [1, 2, 3, 4, 5, 6]);
    assert_eq!(hub.gap_counts(), (1, 0));
    // A read that fails sends subscribers to recover.
    hub.deliver(&positioned("s", 8));
    hub.finish_fill(last_fill(&asked), None);
    assert_eq!(insufficient_count(&a), 1);
    assert_eq!(hub.gap_counts(), (1, 1));
}

/// A resync drops a channel's sequence while a read is under way: the read
/// ending afterwards delivers nothing, neither before nor after the channel
/// starts over with its next publication.
#[test]
fn a_read_outlived_by_a_resync_delivers_nothing() {
    let hub = Hub::new();
    let asked = recording_filler(&hub);
    let a = probe("1");
    hub.subscribe("s", a.clone(), false);
    hub.deliver(&positioned("s", 1));
    hub.deliver(&positioned("s", 3));
    let stale = last_fill(&asked);
    hub.resync(|_| true);
    assert_eq!(insufficient_count(&a), 1);
    hub.finish_fill(stale.clone(), Some(vec![positioned("s", 2)]));
    assert_eq!(offsets(&a), [1], "no sequence: the read is not awaited");
    // A subscriber that came back, and the next publication starts the
    // channel over; the old read is still not the one awaited.
    let b = probe("2");
    hub.subscribe("s", b.clone(), false);
    hub.deliver(&positioned("s", 7));
    hub.finish_fill(stale, Some(vec![positioned("s", 2), positioned("s", 3)]));
    assert_eq!(offsets(&b), [7]);
    assert_eq!(offsets(&a), [1], "a recovers by itself");
}
