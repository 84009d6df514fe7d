use bytes::Bytes;

use super::*;

fn in_epoch(offset: u64, epoch: &str) -> Arc<Publication> {
    Arc::new(
        Publication::new(Arc::from("s"), Bytes::from_static(b"{}"), None)
            .with_offset(offset)
            .with_epoch(Arc::from(epoch)),
    )
}

fn p(offset: u64) -> Arc<Publication> {
    in_epoch(offset, "e1")
}

fn offsets(pubs: &[Arc<Publication>]) -> Vec<u64> {
    pubs.iter().map(|p| p.offset).collect()
}

/// The read a verdict asks for.
fn fill(verdict: Verdict) -> Fill {
    match verdict {
        Verdict::Fill(f) => f,
        other => panic!("expected a read, got {other:?}"),
    }
}

fn is(verdict: Verdict, expected: &str) -> bool {
    let name = match verdict {
        Verdict::Deliver => "deliver",
        Verdict::Skip => "skip",
        Verdict::Fill(_) => "fill",
        Verdict::Resync(_) => "resync",
    };
    name == expected
}

/// Reads with ids from `ids`, of gaps up to 10,000 wide.
fn reads(ids: &FillIds) -> Option<Reads<'_>> {
    Some(Reads {
        ids,
        max_gap: 10_000,
    })
}

#[test]
fn in_order_publications_go_out_and_late_ones_are_dropped() {
    let mut s = Sequence::default();
    assert!(is(s.accept(&p(1), None), "deliver"));
    assert!(is(s.accept(&p(2), None), "deliver"));
    assert!(is(s.accept(&p(2), None), "skip"));
    assert!(is(s.accept(&p(1), None), "skip"));
}

#[test]
fn without_reads_a_gap_sends_subscribers_to_recover() {
    let mut s = Sequence::default();
    s.accept(&p(1), None);
    s.accept(&p(2), None);
    assert!(is(s.accept(&p(4), None), "resync"));
    // Delivery goes on after the gap (the hub delivers only to subscribers
    // that resubscribed); an older late arrival is dropped.
    assert!(is(s.accept(&p(5), None), "deliver"));
    assert!(is(s.accept(&p(3), None), "skip"));
}

#[test]
fn a_gap_is_filled_from_the_stream_in_order() {
    let ids = FillIds::default();
    let mut s = Sequence::default();
    assert!(is(s.accept(&p(1), reads(&ids)), "deliver"));
    // 3 overtook 2: held while 2 is read, in the epoch delivery was in.
    let f = fill(s.accept(&p(3), reads(&ids)));
    assert_eq!(
        (&*f.channel, f.after, f.epoch.as_deref()),
        ("s", 1, Some("e1"))
    );
    assert!(is(s.accept(&p(4), reads(&ids)), "skip"));
    let done = s.finish(&f, Some(vec![p(2), p(3)]), &ids).unwrap();
    assert_eq!(offsets(&done.deliver), [2, 3, 4]);
    assert_eq!(done.then, Then::Done { filled: true });
    assert!(is(s.accept(&p(2), reads(&ids)), "skip"));
    assert!(is(s.accept(&p(5), reads(&ids)), "deliver"));

    // A stream that cannot fill the gap: what it has goes out, then
    // subscribers recover.
    let f = fill(s.accept(&p(8), reads(&ids)));
    let done = s.finish(&f, Some(vec![p(6)]), &ids).unwrap();
    assert_eq!(offsets(&done.deliver), [6]);
    assert_eq!(done.then, Then::Resync);

    // So does a failed read.
    let mut t = Sequence::default();
    t.accept(&p(1), reads(&ids));
    let f = fill(t.accept(&p(3), reads(&ids)));
    let done = t.finish(&f, None, &ids).unwrap();
    assert!(done.deliver.is_empty());
    assert_eq!(done.then, Then::Resync);
}

/// While the stream is read for one gap, later publications may overtake
/// others still in flight: that new gap lies past what the read could see,
/// so it is read again instead of sending subscribers to recover.
#[test]
fn a_gap_opened_during_a_read_is_read_again() {
    let ids = FillIds::default();
    let mut s = Sequence::default();
    s.accept(&p(1), reads(&ids));
    let first = fill(s.accept(&p(3), reads(&ids)));
    // Arrive while 2 is read: 4 in order, 6 ahead of 5.
    assert!(is(s.accept(&p(4), reads(&ids)), "skip"));
    assert!(is(s.accept(&p(6), reads(&ids)), "skip"));
    // The read saw the stream up to 3 (it started when 3 arrived).
    let done = s.finish(&first, Some(vec![p(2), p(3)]), &ids).unwrap();
    assert_eq!(offsets(&done.deliver), [2, 3, 4]);
    let Then::Fill(second) = done.then else {
        panic!("expected a second read, got {:?}", done.then);
    };
    assert_eq!(second.after, 4);
    // 5 comes live before the second read ends; 7 meanwhile in order.
    s.accept(&p(5), reads(&ids));
    s.accept(&p(7), reads(&ids));
    let done = s.finish(&second, Some(vec![p(5), p(6)]), &ids).unwrap();
    assert_eq!(offsets(&done.deliver), [5, 6, 7]);
    assert_eq!(done.then, Then::Done { filled: true });
    assert!(is(s.accept(&p(8), reads(&ids)), "deliver"));

    // An offset the read should have seen but did not is lost: recover.
    let f = fill(s.accept(&p(10), reads(&ids)));
    s.accept(&p(12), reads(&ids));
    let done = s.finish(&f, Some(vec![p(10)]), &ids).unwrap();
    assert!(done.deliver.is_empty());
    assert_eq!(done.then, Then::Resync);
}

/// A read that is no longer awaited (the channel resynced meanwhile, and
/// a new gap started a new read) changes nothing when it ends.
#[test]
fn a_read_no_longer_awaited_is_ignored() {
    let ids = FillIds::default();
    let mut s = Sequence::default();
    s.accept(&p(1), reads(&ids));
    let old = fill(s.accept(&p(3), reads(&ids)));
    // The broker reconnected: the channel starts over (the hub drops its
    // sequence; the next publication makes a new one).
    s = Sequence::default();
    s.observe(5, "e1");
    let new = fill(s.accept(&p(7), reads(&ids)));
    assert_eq!(new.after, 5);
    assert!(s.finish(&old, Some(vec![p(2), p(3)]), &ids).is_none());
    let done = s.finish(&new, Some(vec![p(6), p(7)]), &ids).unwrap();
    assert_eq!(offsets(&done.deliver), [6, 7]);
    // And a read is not taken for another channel instance's: ids differ.
    let mut again = Sequence::default();
    again.accept(&p(1), reads(&ids));
    let f = fill(again.accept(&p(3), reads(&ids)));
    assert_ne!(f, old);
}

#[test]
fn a_new_epoch_sends_subscribers_to_recover() {
    let mut s = Sequence::default();
    s.accept(&p(7), None);
    assert!(matches!(
        s.accept(&in_epoch(1, "e2"), None),
        Verdict::Resync(Why::NewEpoch)
    ));
    assert!(is(s.accept(&in_epoch(2, "e2"), None), "deliver"));
}

#[test]
fn subscribe_positions_count_until_publications_flow() {
    // The subscribe reply said 10: 12 means 11 was lost.
    let mut s = Sequence::default();
    s.observe(10, "e1");
    assert!(is(s.accept(&p(12), None), "resync"));

    // Before anything is delivered the lowest position given counts; once
    // publications flow, a later subscriber's higher position changes
    // nothing (what it has read is still on its way to the others).
    let mut t = Sequence::default();
    t.observe(7, "e1");
    t.observe(5, "e1");
    assert!(is(t.accept(&p(6), None), "deliver"));
    t.observe(9, "e1");
    assert!(is(t.accept(&p(7), None), "deliver"));
    assert!(is(t.accept(&p(8), None), "deliver"));
}

#[test]
fn the_first_publications_of_a_stream_keep_their_order() {
    let ids = FillIds::default();
    let mut s = Sequence::default();
    // Subscribed to an empty stream; 2 (from another node) overtakes 1.
    s.observe(0, "e1");
    let f = fill(s.accept(&p(2), reads(&ids)));
    assert_eq!(f.after, 0);
    let done = s.finish(&f, Some(vec![p(1), p(2)]), &ids).unwrap();
    assert_eq!(offsets(&done.deliver), [1, 2]);
    assert!(is(s.accept(&p(1), reads(&ids)), "skip"));
    assert!(is(s.accept(&p(3), reads(&ids)), "deliver"));
}

#[test]
fn holding_back_is_bounded() {
    let ids = FillIds::default();
    let mut s = Sequence::default();
    s.accept(&p(1), reads(&ids));
    let f = fill(s.accept(&p(3), reads(&ids)));
    for offset in 4..3 + MAX_HELD as u64 {
        assert!(is(s.accept(&p(offset), reads(&ids)), "skip"));
    }
    assert!(is(s.accept(&p(3 + MAX_HELD as u64), reads(&ids)), "resync"));
    // The abandoned read changes nothing when it ends.
    assert!(s.finish(&f, Some(vec![p(2)]), &ids).is_none());

    // Nor is a gap wider than the node reads.
    let narrow = Some(Reads {
        ids: &ids,
        max_gap: 5,
    });
    let mut t = Sequence::default();
    t.accept(&p(1), narrow);
    assert!(matches!(t.accept(&p(7), narrow), Verdict::Resync(Why::Gap)));
    assert!(is(t.accept(&p(10), narrow), "fill"), "a gap of 5 is read");
}
