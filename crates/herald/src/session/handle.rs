//! A connected session's face in the hub ([`Handle`]): its identity and
//! outbox, and the per-channel guards that keep a subscribe's stream read
//! and live delivery from losing or repeating a publication.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use herald_protocol::{PresenceEvent, Publication};
use parking_lot::Mutex;

use super::Outbox;
use crate::frame::Encoding;
use crate::hub::{Client, Control, Forms};

/// The part of a connected session the hub holds: identity and outbox.
pub struct Handle {
    pub(super) key: u64,
    /// Shared with the session and the hub: one copy per connection.
    client_id: Arc<str>,
    pub(super) user: String,
    outbox: Arc<Outbox>,
    /// The format the client speaks.
    encoding: Encoding,
    /// The transport's name, for operators.
    transport: &'static str,
    /// Per-channel delivery guards while and just after a subscribe reads
    /// the channel's stream, so that nothing is lost or repeated around it;
    /// allocated only while there are any.
    guards: Mutex<Option<Box<Guards>>>,
    /// `guards` is in use; lets delivery skip the lock.
    guarded: AtomicBool,
    /// Channels subscribed with delta compression, each with the offset of
    /// the last publication queued for the client (0: none yet), the base
    /// a delta needs; allocated only while there are any.
    deltas: Mutex<Option<Box<Bases>>>,
}

/// Per delta channel, the offset of the last publication queued (0: none).
type Bases = HashMap<Arc<str>, u64>;

type GuardsLock<'a> = parking_lot::MutexGuard<'a, Option<Box<Guards>>>;

/// A delta channel's base, if the channel is one.
fn base_of<'a>(deltas: &'a mut Option<Box<Bases>>, channel: &str) -> Option<&'a mut u64> {
    deltas.as_mut()?.get_mut(channel)
}

#[derive(Default)]
struct Guards {
    /// Publications held back while the stream is being read.
    held: HashMap<Arc<str>, Vec<Arc<Publication>>>,
    /// The offset a subscribe reply gave: publications at or below it are
    /// already known to the client (a durable store may deliver a
    /// committed publication after a reader saw it), until one above passes.
    floors: HashMap<Arc<str>, u64>,
}

impl Guards {
    /// Whether the publication goes out now: one in a held channel is kept
    /// back, one at or below its channel's floor is dropped, and the first
    /// above the floor lifts it. One without an offset (published with
    /// `skip_history`) has no place in the stream: only holding applies.
    fn admit(&mut self, publication: &Arc<Publication>) -> bool {
        let channel = &*publication.channel;
        if let Some(held) = self.held.get_mut(channel) {
            held.push(publication.clone());
            return false;
        }
        match self.floors.get(channel) {
            _ if publication.offset == 0 => true,
            Some(&floor) if publication.offset <= floor => false,
            Some(_) => {
                self.floors.remove(channel);
                true
            }
            None => true,
        }
    }
}

impl Handle {
    pub(super) fn new(
        key: u64,
        client_id: Arc<str>,
        user: String,
        outbox: Arc<Outbox>,
        encoding: Encoding,
        transport: &'static str,
    ) -> Self {
        Self {
            key,
            client_id,
            user,
            outbox,
            encoding,
            transport,
            guards: Mutex::default(),
            guarded: AtomicBool::new(false),
            deltas: Mutex::default(),
        }
    }

    /// The channel's publications come as deltas where they can (before
    /// the subscription joins the hub).
    pub(super) fn start_deltas(&self, channel: &str) {
        let mut deltas = self.deltas.lock();
        deltas
            .get_or_insert_with(Box::default)
            .insert(Arc::from(channel), 0);
    }

    /// Notes that the client has publication `offset` of a delta channel:
    /// the next publication may be a delta against it.
    pub(super) fn delta_base(&self, channel: &str, offset: u64) {
        if let Some(base) = base_of(&mut self.deltas.lock(), channel) {
            *base = offset;
        }
    }

    pub(super) fn start_buffering(&self, channel: &str) {
        let mut lock = self.guards.lock();
        let g = lock.get_or_insert_with(Box::default);
        g.held.insert(Arc::from(channel), Vec::new());
        self.guarded.store(true, Ordering::Release);
    }

    /// Ends buffering: queues the held publications newer than `after` (and
    /// those without an offset), under the lock so later ones cannot
    /// overtake them, and keeps `after` as the channel's floor while none
    /// newer has passed.
    pub(super) fn finish_buffering(&self, channel: &str, after: u64) {
        let mut lock = self.guards.lock();
        let Some(g) = lock.as_mut() else { return };
        let Some((key, held)) = g.held.remove_entry(channel) else {
            return;
        };
        if !held.iter().any(|p| p.offset > after) {
            g.floors.insert(key, after);
        }
        let mut last = None;
        for p in held.iter().filter(|p| p.offset > after || p.offset == 0) {
            if let Some(frame) = self.encoding.publication(p) {
                self.outbox.push_frame(frame);
                last = Some(p.offset);
            }
        }
        if let Some(offset) = last {
            self.delta_base(channel, offset);
        }
        self.release_if_unused(&mut lock);
    }

    /// Drops the channel's guards and delta base (on unsubscribe).
    pub(super) fn forget(&self, channel: &str) {
        let mut lock = self.guards.lock();
        if let Some(g) = lock.as_mut() {
            g.held.remove(channel);
            g.floors.remove(channel);
            self.release_if_unused(&mut lock);
        }
        drop(lock);
        let mut deltas = self.deltas.lock();
        if let Some(d) = deltas.as_mut() {
            d.remove(channel);
            if d.is_empty() {
                *deltas = None;
            }
        }
    }

    /// Passes a publication through the guards, if any are in use: `None`
    /// when it is held back or dropped; else the guards' lock, if taken,
    /// to queue it under.
    fn admit(&self, publication: &Arc<Publication>) -> Option<Option<GuardsLock<'_>>> {
        if !self.guarded.load(Ordering::Acquire) {
            return Some(None);
        }
        let mut lock = self.guards.lock();
        if let Some(g) = lock.as_mut() {
            if !g.admit(publication) {
                return None;
            }
            self.release_if_unused(&mut lock);
        }
        Some(Some(lock))
    }

    fn release_if_unused(&self, guards: &mut Option<Box<Guards>>) {
        if guards
            .as_ref()
            .is_some_and(|g| g.held.is_empty() && g.floors.is_empty())
        {
            *guards = None;
            self.guarded.store(false, Ordering::Release);
        }
    }
}

impl Client for Handle {
    fn key(&self) -> u64 {
        self.key
    }
    fn client_id(&self) -> &str {
        &self.client_id
    }
    fn shared_id(&self) -> Arc<str> {
        self.client_id.clone()
    }
    fn user(&self) -> &str {
        &self.user
    }
    fn transport(&self) -> &'static str {
        self.transport
    }
    fn protocol(&self) -> &'static str {
        self.encoding.protocol_name()
    }
    fn deliver(&self, publication: &Arc<Publication>) {
        // While guards are in use, the frame is queued under their lock, so
        // that it cannot overtake held publications being released.
        let Some(_guards) = self.admit(publication) else {
            return;
        };
        // An overflow is noticed by the writer, which closes with 3008.
        if let Some(frame) = self.encoding.publication(publication) {
            self.outbox.push_frame(frame);
        }
    }
    fn deliver_delta(&self, forms: &Forms<'_>) {
        let text = self.encoding.is_text();
        let channel = &*forms.publication().channel;
        let Some(whole) = forms.whole(text) else {
            // Not for this format (as for every subscriber in it); the
            // client's last data is no longer the channel's last.
            self.delta_base(channel, 0);
            return;
        };
        // Held back while the stream is read, it goes whole.
        let Some(_guards) = self.admit(&whole) else {
            return;
        };
        // Chosen and queued under the lock, so that two publications
        // delivered at once (ones without an offset are not sequenced)
        // reach the outbox in the order their bases say.
        let mut deltas = self.deltas.lock();
        let chosen = match base_of(&mut deltas, channel) {
            Some(base) => {
                let delta = match forms.base() {
                    Some(b) if b == *base => forms.delta(text),
                    _ => None,
                };
                *base = whole.offset;
                delta.unwrap_or(whole)
            }
            None => whole,
        };
        if let Some(frame) = self.encoding.publication(&chosen) {
            self.outbox.push_frame(frame);
        }
    }
    fn deliver_presence(&self, event: &Arc<PresenceEvent>) {
        if let Some(frame) = self.encoding.presence(event) {
            self.outbox.push_frame(frame);
        }
    }
    fn control(&self, control: Control) {
        self.outbox.push_control(control);
    }
}

#[cfg(test)]
mod tests {
    use std::collections::VecDeque;

    use bytes::Bytes;

    use super::*;
    use crate::session::Item;

    fn handle() -> Handle {
        Handle::new(
            1,
            Arc::from("c1"),
            "u".into(),
            Arc::new(Outbox::new(1 << 20)),
            Encoding::Json,
            "websocket",
        )
    }

    fn publication(channel: &str, offset: u64) -> Arc<Publication> {
        let data = Bytes::from(format!("{{\"n\":{offset}}}"));
        Arc::new(Publication::new(Arc::from(channel), data, None).with_offset(offset))
    }

    /// Delivers as the hub does.
    fn deliver(h: &Handle, p: &Arc<Publication>) {
        h.deliver(p);
    }

    /// The offsets queued so far, in order.
    fn queued(h: &Handle) -> Vec<u64> {
        let mut items = VecDeque::new();
        h.outbox.drain(&mut items);
        items
            .iter()
            .map(|item| match item {
                Item::Frame(f) => {
                    let v: serde_json::Value = serde_json::from_str(f.as_text().unwrap()).unwrap();
                    v["push"]["pub"]["data"]["n"].as_u64().unwrap()
                }
                Item::Control(_) => panic!("no control expected"),
            })
            .collect()
    }

    fn in_use(h: &Handle) -> bool {
        let used = h.guards.lock().is_some();
        assert_eq!(
            used,
            h.guarded.load(Ordering::Acquire),
            "flag and guards agree"
        );
        used
    }

    #[test]
    fn held_publications_newer_than_the_reply_go_out_in_order_then_guards_go() {
        let h = handle();
        h.start_buffering("a");
        for n in [4, 5, 6] {
            deliver(&h, &publication("a", n));
        }
        deliver(&h, &publication("b", 9));
        assert_eq!(queued(&h), [9], "another channel is not held");
        h.finish_buffering("a", 4);
        assert_eq!(queued(&h), [5, 6]);
        assert!(!in_use(&h), "something newer passed: no floor kept");
        deliver(&h, &publication("a", 7));
        assert_eq!(queued(&h), [7]);
    }

    #[test]
    fn a_floor_drops_what_the_reply_covered_until_something_newer_passes() {
        let h = handle();
        h.start_buffering("a");
        deliver(&h, &publication("a", 3));
        h.finish_buffering("a", 3);
        assert!(queued(&h).is_empty());
        assert!(in_use(&h), "the floor stays");
        deliver(&h, &publication("a", 3));
        assert!(queued(&h).is_empty(), "at the floor: already known");
        deliver(&h, &publication("a", 4));
        deliver(&h, &publication("a", 2));
        assert_eq!(
            queued(&h),
            [4, 2],
            "the floor is lifted by the first newer one"
        );
        assert!(!in_use(&h));
    }

    #[test]
    fn forgetting_drops_what_was_held() {
        let h = handle();
        h.start_buffering("a");
        deliver(&h, &publication("a", 1));
        h.forget("a");
        assert!(!in_use(&h));
        h.finish_buffering("a", 0);
        assert!(
            queued(&h).is_empty(),
            "nothing held survives an unsubscribe"
        );
    }

    /// A publication whose push is not UTF-8 (only a bug could make one)
    /// is not queued, and nothing panics.
    #[test]
    fn a_push_that_is_not_utf8_is_not_queued() {
        let h = handle();
        let bad = Publication::new(Arc::from("a"), Bytes::from_static(b"\"\xff\""), None);
        h.deliver(&Arc::new(bad));
        deliver(&h, &publication("a", 1));
        assert_eq!(queued(&h), [1]);
    }
}
