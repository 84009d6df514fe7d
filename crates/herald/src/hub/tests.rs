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
    fn deliver(&self, p: &Arc<Publication>, frame: &Frame) {
        assert_eq!(frame.as_bytes(), &p.json_push()[..]);
        self.got.lock().push(p.clone());
    }
    fn deliver_presence(&self, _: &Frame) {
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

/// A frame that is not UTF-8 (only a bug could make one) is not sent to
/// anyone, and nothing panics.
#[test]
fn a_frame_that_is_not_utf8_goes_nowhere() {
    assert!(frame(Bytes::from_static(b"{\"a\":\"\xff\"}")).is_none());
    assert_eq!(frame(Bytes::from_static(b"{}")).unwrap(), "{}");
    let hub = Hub::new();
    let a = probe("1");
    hub.subscribe("news", a.clone(), false);
    let bad = Publication::new(Arc::from("news"), Bytes::from_static(b"\"\xff\""), None);
    assert_eq!(hub.deliver(&Arc::new(bad)), 0);
    assert!(a.got.lock().is_empty());
    assert_eq!(hub.deliver(&publication("news")), 1);
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

#[test]
fn a_gap_in_offsets_stops_delivery_and_asks_for_recovery() {
    let hub = Hub::new();
    let (a, b) = (probe("1"), probe("2"));
    hub.subscribe("s", a.clone(), false);
    hub.deliver(&positioned("s", 1));
    hub.deliver(&positioned("s", 2));
    // 3 was lost on its way: 4 is not delivered, both subscribers are told
    // once, and get nothing more until they subscribe again.
    hub.subscribe("s", b.clone(), false);
    assert_eq!(hub.deliver(&positioned("s", 4)), 0);
    assert_eq!(hub.deliver(&positioned("s", 5)), 0);
    assert_eq!(offsets(&a), [1, 2]);
    assert!(offsets(&b).is_empty());
    assert_eq!((insufficient_count(&a), insufficient_count(&b)), (1, 1));
    // A late arrival older than what was seen is dropped.
    hub.unsubscribe("s", a.key);
    hub.subscribe("s", a.clone(), false);
    assert_eq!(hub.deliver(&positioned("s", 3)), 0);
    assert_eq!(
        hub.deliver(&positioned("s", 6)),
        1,
        "b is stale until it leaves"
    );
    assert_eq!(offsets(&a), [1, 2, 6]);
}

#[test]
fn subscribe_positions_and_new_streams_are_respected() {
    let hub = Hub::new();
    let a = probe("1");
    hub.subscribe("s", a.clone(), false);
    // The subscribe reply said 10: 12 means 11 was lost.
    hub.observe_position("s", 10, "e1");
    assert_eq!(hub.deliver(&positioned("s", 12)), 0);
    assert_eq!(insufficient_count(&a), 1);

    // Before anything is delivered the lowest position given counts; once
    // publications flow, a later subscriber's higher position changes
    // nothing (what it has read is still on its way to the others).
    let (b, c) = (probe("2"), probe("3"));
    hub.subscribe("t", b.clone(), false);
    hub.observe_position("t", 7, "e1");
    hub.observe_position("t", 5, "e1");
    assert_eq!(hub.deliver(&positioned("t", 6)), 1);
    hub.subscribe("t", c.clone(), false);
    hub.observe_position("t", 9, "e1");
    assert_eq!(hub.deliver(&positioned("t", 7)), 2);
    assert_eq!(hub.deliver(&positioned("t", 8)), 2);
    assert_eq!(offsets(&b), [6, 7, 8]);
    assert_eq!(insufficient_count(&b), 0);
    // Unpositioned publications are never checked.
    assert_eq!(hub.deliver(&publication("t")), 2);
    // A stream that starts over (a new epoch, Redis lost it) sends every
    // subscriber to recover, whatever its offset.
    let restarted = Arc::new(
        Publication::new(Arc::from("t"), Bytes::from_static(b"{}"), None)
            .with_offset(1)
            .with_epoch(Arc::from("e2")),
    );
    assert_eq!(hub.deliver(&restarted), 0);
    assert_eq!((insufficient_count(&b), insufficient_count(&c)), (1, 1));

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
    hub.set_filler(Arc::new(move |fill: Fill| log.lock().push(fill)));
    asked
}

/// The `after` of every read asked for so far.
fn afters(asked: &Mutex<Vec<Fill>>) -> Vec<u64> {
    asked.lock().iter().map(|f| f.after).collect()
}

/// The latest read asked for, to finish.
fn last_fill(asked: &Mutex<Vec<Fill>>) -> Fill {
    asked.lock().last().cloned().expect("a read was asked for")
}

/// While the stream is read for one gap, later publications may overtake
/// others still in flight: that new gap lies past what the read could see,
/// so it is read again instead of sending subscribers to recover.
#[test]
fn a_gap_opened_during_a_fill_is_read_again() {
    let hub = Hub::new();
    let asked = recording_filler(&hub);
    let a = probe("1");
    hub.subscribe("s", a.clone(), false);
    hub.deliver(&positioned("s", 1));
    assert_eq!(hub.deliver(&positioned("s", 3)), 0);
    // Arrive while 2 is read: 4 in order, 6 ahead of 5.
    hub.deliver(&positioned("s", 4));
    hub.deliver(&positioned("s", 6));
    // The read saw the stream up to 3 (it started when 3 arrived).
    let first = last_fill(&asked);
    hub.finish_fill(first, Some(vec![positioned("s", 2), positioned("s", 3)]));
    assert_eq!(offsets(&a), [1, 2, 3, 4]);
    assert_eq!(afters(&asked), [1, 4], "5 is read after 4");
    // 5 comes live before the second read ends; 7 meanwhile in order.
    hub.deliver(&positioned("s", 5));
    hub.deliver(&positioned("s", 7));
    hub.finish_fill(
        last_fill(&asked),
        Some(vec![positioned("s", 5), positioned("s", 6)]),
    );
    assert_eq!(offsets(&a), [1, 2, 3, 4, 5, 6, 7]);
    assert_eq!(insufficient_count(&a), 0);
    assert_eq!(hub.deliver(&positioned("s", 8)), 1);

    // An offset the read should have seen but did not is lost: recover.
    assert_eq!(hub.deliver(&positioned("s", 10)), 0);
    hub.deliver(&positioned("s", 12));
    hub.finish_fill(last_fill(&asked), Some(vec![positioned("s", 10)]));
    assert_eq!(insufficient_count(&a), 1);
    assert_eq!(offsets(&a), [1, 2, 3, 4, 5, 6, 7, 8]);
}

/// A read that is no longer awaited (the channel resynced meanwhile, and a
/// new gap started a new read) changes nothing when it ends.
#[test]
fn a_read_no_longer_awaited_is_ignored() {
    let hub = Hub::new();
    let asked = recording_filler(&hub);
    let (a, b) = (probe("1"), probe("2"));
    hub.subscribe("s", a.clone(), false);
    // b keeps the channel (and its sequencing state) while a resubscribes.
    hub.subscribe("s", b.clone(), false);
    hub.deliver(&positioned("s", 1));
    hub.deliver(&positioned("s", 3));
    let old = last_fill(&asked);
    // The broker reconnected: subscribers recover, the channel starts over
    // from the next publication.
    hub.resync(|_| true);
    hub.unsubscribe("s", a.key);
    hub.subscribe("s", a.clone(), false);
    hub.observe_position("s", 5, "e1");
    hub.deliver(&positioned("s", 7));
    let new = last_fill(&asked);
    assert_eq!(afters(&asked), [1, 5]);
    // The old read (after 1) ends first: ignored, not taken for the new one.
    hub.finish_fill(old, Some(vec![positioned("s", 2), positioned("s", 3)]));
    assert_eq!(offsets(&a), [1]);
    assert_eq!(insufficient_count(&a), 1, "only the resync's");
    hub.finish_fill(new, Some(vec![positioned("s", 6), positioned("s", 7)]));
    assert_eq!(offsets(&a), [1, 6, 7]);
    assert_eq!(insufficient_count(&a), 1);
    assert_eq!(offsets(&b), [1], "b stays stale until it resubscribes");
}

#[test]
fn a_gap_is_filled_from_the_stream_in_order() {
    let hub = Hub::new();
    let asked = recording_filler(&hub);
    let a = probe("1");
    hub.subscribe("s", a.clone(), false);
    hub.deliver(&positioned("s", 1));
    // 3 overtook 2 (published on another node): held while 2 is read.
    assert_eq!(hub.deliver(&positioned("s", 3)), 0);
    assert_eq!(hub.deliver(&positioned("s", 4)), 0);
    // The fill reads the stream in the epoch delivery was in.
    let fill = last_fill(&asked);
    assert_eq!(
        (&*fill.channel, fill.after, fill.epoch.as_deref()),
        ("s", 1, Some("e1"))
    );
    assert_eq!(afters(&asked), [1]);
    assert_eq!(offsets(&a), [1]);
    hub.finish_fill(fill, Some(vec![positioned("s", 2), positioned("s", 3)]));
    assert_eq!(offsets(&a), [1, 2, 3, 4]);
    // The late 2 is dropped; delivery goes on.
    assert_eq!(hub.deliver(&positioned("s", 2)), 0);
    assert_eq!(hub.deliver(&positioned("s", 5)), 1);
    assert_eq!(insufficient_count(&a), 0);
    assert_eq!(hub.gap_counts(), (1, 0));

    // A stream that cannot fill the gap sends subscribers to recover.
    assert_eq!(hub.deliver(&positioned("s", 8)), 0);
    hub.finish_fill(last_fill(&asked), Some(vec![positioned("s", 6)]));
    assert_eq!(offsets(&a), [1, 2, 3, 4, 5, 6]);
    assert_eq!(insufficient_count(&a), 1);
    // So does a failed read.
    let b = probe("2");
    hub.subscribe("t", b.clone(), false);
    hub.deliver(&positioned("t", 1));
    hub.deliver(&positioned("t", 3));
    hub.finish_fill(last_fill(&asked), None);
    assert_eq!(offsets(&b), [1]);
    assert_eq!(insufficient_count(&b), 1);
}

#[test]
fn the_first_publications_of_a_stream_keep_their_order() {
    let hub = Hub::new();
    let asked = recording_filler(&hub);
    let a = probe("1");
    hub.subscribe("v", a.clone(), false);
    // Subscribed to an empty stream; 2 (from another node) overtakes 1.
    hub.observe_position("v", 0, "e1");
    assert_eq!(hub.deliver(&positioned("v", 2)), 0);
    assert_eq!(afters(&asked), [0]);
    hub.finish_fill(
        last_fill(&asked),
        Some(vec![positioned("v", 1), positioned("v", 2)]),
    );
    assert_eq!(hub.deliver(&positioned("v", 1)), 0);
    assert_eq!(hub.deliver(&positioned("v", 3)), 1);
    assert_eq!(offsets(&a), [1, 2, 3]);
}
