//! The hub: which local connections are subscribed to which channel, and which
//! connections each user has. Fan-out takes a read lock on one shard and hands
//! every subscriber the same shared publication; it never waits on a socket.
//! The hub knows nothing of JSON or WebSocket: a connection is a [`Client`].

use std::collections::HashMap;
use std::hash::{BuildHasher, Hash};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::sync::OnceLock;

use bytes::Bytes;
use herald_protocol::{Disconnect, PresenceEvent, Publication};
use parking_lot::{Mutex, RwLock};

use members::Members;

mod members;

/// Number of shards of each map; a power of two.
const SHARDS: usize = 64;

/// A request to a connection from outside its own command flow (server API,
/// later other nodes). The connection acts on it in order with its output.
#[derive(Debug, Clone)]
pub enum Control {
    Disconnect(Disconnect),
    /// End a subscription with the given unsubscribe code and reason.
    Unsubscribe {
        channel: String,
        code: u32,
        reason: String,
    },
    /// Subscribe the connection server-side.
    Subscribe {
        channel: String,
        info: Option<Bytes>,
        data: Option<Bytes>,
        expire_at: Option<i64>,
    },
    /// Replace the connection's expiry (`None`: never) or mark it expired.
    Refresh {
        expired: bool,
        expire_at: Option<i64>,
        info: Option<Bytes>,
    },
    /// An asynchronous message to the client.
    Message(Bytes),
}

/// An encoded frame ready to go out as a text message: checked as UTF-8
/// once, then shared by every connection it goes to.
pub type Frame = axum::extract::ws::Utf8Bytes;

/// `bytes` as a [`Frame`]. Encoded frames are always UTF-8 (everything in
/// them was UTF-8 JSON when it arrived), so `None` means a bug, logged
/// here; the frame is not sent.
pub fn frame<B>(bytes: B) -> Option<Frame>
where
    Frame: TryFrom<B, Error = std::str::Utf8Error>,
{
    match Frame::try_from(bytes) {
        Ok(frame) => Some(frame),
        Err(e) => {
            tracing::error!(error = %e, "encoded frame is not UTF-8; not sent");
            None
        }
    }
}

/// One local connection, as the hub sees it.
pub trait Client: Send + Sync + 'static {
    /// A process-unique key for maps.
    fn key(&self) -> u64;
    /// The protocol client id (a UUID).
    fn client_id(&self) -> &str;
    /// The client id as a shared string (the hub's key for the client).
    fn shared_id(&self) -> Arc<str> {
        Arc::from(self.client_id())
    }
    fn user(&self) -> &str;
    /// Queue a publication (`frame` is its push); never blocks. A client
    /// that cannot keep up disconnects itself.
    fn deliver(&self, publication: &Arc<Publication>, frame: &Frame);
    /// Queue a join or leave event's push.
    fn deliver_presence(&self, frame: &Frame);
    fn control(&self, control: Control);
}

type ClientRef = Arc<dyn Client>;

/// Starts reading a channel's stream to fill a gap; the reader hands the
/// request back with what it found to [`Hub::finish_fill`] (`None` if the
/// read failed, as it does when the stream is no longer in that epoch).
pub type Filler = Arc<dyn Fn(Fill) + Send + Sync>;

/// A read of a channel's stream that the hub asks for.
#[derive(Debug, Clone)]
pub struct Fill {
    pub channel: Arc<str>,
    /// Publications after this offset are wanted.
    pub after: u64,
    /// The epoch the hub knows for the stream, if any.
    pub epoch: Option<Arc<str>>,
    /// The highest offset the read must see: publications are delivered
    /// only once stored, so every offset up to the highest one held when
    /// the read started is in the stream when it is read.
    covers: u64,
    /// Tells this read from others of the same channel: a read that is no
    /// longer awaited (the channel resynced or started over meanwhile)
    /// changes nothing when it ends.
    id: u64,
}

/// Most publications (and payload bytes) held back while a gap is being
/// filled; beyond either the fill is abandoned and subscribers recover by
/// themselves.
const MAX_HELD: usize = 10_000;
const MAX_HELD_BYTES: usize = 16 << 20;

/// The local subscribers of one channel and where its stream stands.
#[derive(Default)]
struct Channel {
    subs: Members<Sub>,
    seq: Mutex<Seq>,
}

/// Delivery order of a channel's positioned publications.
#[derive(Default)]
struct Seq {
    /// Last offset delivered or given to a subscriber; `None` until known.
    last: Option<u64>,
    /// A publication has been delivered (until then `last` comes from
    /// subscribe replies).
    live: bool,
    /// The epoch of the stream those offsets belong to, once known.
    epoch: Option<Arc<str>>,
    /// Publications held back while a gap is read from the stream, and
    /// their payload bytes.
    held: Option<Vec<Arc<Publication>>>,
    held_bytes: usize,
    /// The id of the stream read under way (0: none).
    fill_id: u64,
}

/// One subscription in the hub.
struct Sub {
    client: ClientRef,
    /// Receives join/leave events of the channel.
    join_leave: bool,
    /// Told its state is insufficient: gets nothing more until it leaves
    /// (and subscribes again, recovering from the stream).
    stale: AtomicBool,
}

struct Sharded<K, V> {
    hasher: std::collections::hash_map::RandomState,
    shards: Box<[RwLock<HashMap<K, V>>]>,
}

impl<K: Hash + Eq, V> Sharded<K, V> {
    fn new() -> Self {
        Self {
            hasher: Default::default(),
            shards: (0..SHARDS).map(|_| RwLock::new(HashMap::new())).collect(),
        }
    }
    fn shard<Q: Hash + ?Sized>(&self, key: &Q) -> &RwLock<HashMap<K, V>> {
        &self.shards[(self.hasher.hash_one(key) as usize) & (SHARDS - 1)]
    }
}

/// Why a connection was not admitted.
#[derive(Debug, PartialEq, Eq)]
pub enum Refused {
    NodeLimit,
    UserLimit,
}

/// Channel subscriptions and connection registry of this node.
pub struct Hub {
    channels: Sharded<Arc<str>, Channel>,
    clients: Sharded<Arc<str>, ClientRef>,
    users: Sharded<String, HashMap<u64, ClientRef>>,
    num_clients: AtomicUsize,
    num_subscriptions: AtomicUsize,
    filler: OnceLock<Filler>,
    fills: AtomicU64,
    /// Gaps in positioned channels filled from the stream, and times a
    /// channel's subscribers were sent to recover by themselves.
    gaps_filled: AtomicU64,
    resyncs: AtomicU64,
}

impl Default for Hub {
    fn default() -> Self {
        Self::new()
    }
}

impl Hub {
    pub fn new() -> Self {
        Self {
            channels: Sharded::new(),
            clients: Sharded::new(),
            users: Sharded::new(),
            num_clients: AtomicUsize::new(0),
            num_subscriptions: AtomicUsize::new(0),
            filler: OnceLock::new(),
            fills: AtomicU64::new(0),
            gaps_filled: AtomicU64::new(0),
            resyncs: AtomicU64::new(0),
        }
    }

    /// (gaps filled from streams, channel resyncs) so far.
    pub fn gap_counts(&self) -> (u64, u64) {
        (
            self.gaps_filled.load(Ordering::Relaxed),
            self.resyncs.load(Ordering::Relaxed),
        )
    }

    /// Lets the hub fill gaps in positioned channels from their streams;
    /// without a filler a gap makes subscribers recover by themselves.
    pub fn set_filler(&self, filler: Filler) {
        let _ = self.filler.set(filler);
    }

    /// Registers a connection, enforcing the node and per-user limits
    /// (zero means unlimited).
    pub fn add_client(
        &self,
        client: ClientRef,
        node_limit: usize,
        user_limit: usize,
    ) -> Result<(), Refused> {
        let n = self.num_clients.fetch_add(1, Ordering::AcqRel);
        if node_limit > 0 && n >= node_limit {
            self.num_clients.fetch_sub(1, Ordering::AcqRel);
            return Err(Refused::NodeLimit);
        }
        {
            let user = client.user().to_string();
            let mut shard = self.users.shard(&user).write();
            let conns = shard.entry(user).or_default();
            if user_limit > 0 && !client.user().is_empty() && conns.len() >= user_limit {
                drop(shard);
                self.num_clients.fetch_sub(1, Ordering::AcqRel);
                return Err(Refused::UserLimit);
            }
            conns.insert(client.key(), client.clone());
        }
        let id = client.shared_id();
        self.clients.shard(&*id).write().insert(id, client);
        Ok(())
    }

    pub fn remove_client(&self, client: &dyn Client) {
        if self
            .clients
            .shard(client.client_id())
            .write()
            .remove(client.client_id())
            .is_none()
        {
            return;
        }
        self.num_clients.fetch_sub(1, Ordering::AcqRel);
        let mut shard = self.users.shard(client.user()).write();
        if let Some(conns) = shard.get_mut(client.user()) {
            conns.remove(&client.key());
            if conns.is_empty() {
                shard.remove(client.user());
            }
        }
    }

    /// Adds a subscriber; true when it is the channel's first on this node.
    pub fn subscribe(&self, channel: &str, client: ClientRef, join_leave: bool) -> bool {
        let mut shard = self.channels.shard(channel).write();
        let (first, subs) = match shard.get_mut(channel) {
            Some(subs) => (false, subs),
            None => (true, shard.entry(Arc::from(channel)).or_default()),
        };
        if subs
            .subs
            .insert(
                client.key(),
                Sub {
                    client,
                    join_leave,
                    stale: AtomicBool::new(false),
                },
            )
            .is_none()
        {
            self.num_subscriptions.fetch_add(1, Ordering::Relaxed);
        }
        first
    }

    /// Removes a subscriber; true when the channel has none left on this node.
    pub fn unsubscribe(&self, channel: &str, key: u64) -> bool {
        let mut shard = self.channels.shard(channel).write();
        let Some(subs) = shard.get_mut(channel) else {
            return false;
        };
        if subs.subs.remove(key).is_some() {
            self.num_subscriptions.fetch_sub(1, Ordering::Relaxed);
        }
        if subs.subs.is_empty() {
            shard.remove(channel);
            return true;
        }
        false
    }

    /// Hands a publication to every local subscriber of its channel; returns
    /// how many there were.
    ///
    /// Positioned publications (offset > 0) are delivered in offset order
    /// without gaps. One at or below the last offset delivered is dropped
    /// (its subscribers have it). One that skips offsets — lost between
    /// nodes, or overtaken by a later one published on another node — is
    /// held back while the missing ones are read from the stream, then all go
    /// out in order. If the stream cannot fill the gap, or the stream started
    /// over (a new epoch), every subscriber of the channel is told its state
    /// is insufficient (unsubscribe 2500) and gets nothing more until it
    /// resubscribes and recovers.
    pub fn deliver(&self, publication: &Arc<Publication>) -> usize {
        let shard = self.channels.shard(&*publication.channel).read();
        let Some(ch) = shard.get(&*publication.channel) else {
            return 0;
        };
        let offset = publication.offset;
        if offset == 0 {
            return fan_out(ch, publication);
        }
        let mut seq = ch.seq.lock();
        match (&publication.epoch, &seq.epoch) {
            (Some(new), Some(known)) if new != known => {
                tracing::info!(
                    channel = &*publication.channel,
                    "stream started over: subscribers recover"
                );
                *seq = Seq {
                    last: Some(offset),
                    epoch: Some(new.clone()),
                    ..Seq::default()
                };
                self.insufficient(&publication.channel, ch);
                return 0;
            }
            (Some(new), None) => seq.epoch = Some(new.clone()),
            _ => {}
        }
        if let Some(held) = seq.held.as_mut() {
            held.push(publication.clone());
            let (count, bytes) = (held.len(), seq.held_bytes + publication.data.len());
            seq.held_bytes = bytes;
            if count > MAX_HELD || bytes > MAX_HELD_BYTES {
                seq.held = None;
                seq.held_bytes = 0;
                seq.last = Some(offset);
                self.insufficient(&publication.channel, ch);
            }
            return 0;
        }
        let last = match seq.last {
            None => {
                seq.last = Some(offset);
                seq.live = true;
                return fan_out(ch, publication);
            }
            Some(last) if offset == last + 1 => {
                seq.last = Some(offset);
                seq.live = true;
                return fan_out(ch, publication);
            }
            Some(last) if offset <= last => return 0,
            Some(last) => last,
        };
        match self.filler.get() {
            Some(fill) => {
                seq.held = Some(vec![publication.clone()]);
                seq.held_bytes = publication.data.len();
                fill(self.fill(&mut seq, publication.channel.clone(), last, offset));
            }
            None => {
                seq.last = Some(offset);
                self.insufficient(&publication.channel, ch);
            }
        }
        0
    }

    /// Completes a fill started by [`Hub::deliver`]: delivers what the
    /// stream held after the gap and the publications held back, in order.
    /// A gap past what the read could see (publications that arrived while
    /// it was under way, overtaking others still in flight) is read again;
    /// an offset the stream should have had but lacks makes subscribers
    /// recover by themselves.
    pub fn finish_fill(&self, fill: Fill, from_stream: Option<Vec<Arc<Publication>>>) {
        let channel = &*fill.channel;
        let shard = self.channels.shard(channel).read();
        let Some(ch) = shard.get(channel) else {
            return;
        };
        let mut seq = ch.seq.lock();
        if seq.fill_id != fill.id {
            return;
        }
        seq.fill_id = 0;
        let Some(held) = seq.held.take() else {
            return;
        };
        seq.held_bytes = 0;
        let filled = from_stream.is_some();
        let mut all = from_stream.unwrap_or_default();
        all.extend(held);
        all.sort_by_key(|p| p.offset);
        all.dedup_by_key(|p| p.offset);
        let mut last = seq.last.unwrap_or(0);
        for (i, p) in all.iter().enumerate() {
            if p.offset <= last {
                continue;
            }
            if p.offset != last + 1 && filled && last + 1 > fill.covers {
                if let Some(filler) = self.filler.get() {
                    let rest = all.split_off(i);
                    let covers = rest.last().map_or(0, |p| p.offset);
                    seq.held_bytes = rest.iter().map(|p| p.data.len()).sum();
                    seq.held = Some(rest);
                    seq.last = Some(last);
                    filler(self.fill(&mut seq, fill.channel.clone(), last, covers));
                    return;
                }
            }
            if p.offset != last + 1 {
                tracing::info!(
                    channel,
                    after = last,
                    next = p.offset,
                    filled,
                    "offsets missing from the stream: subscribers recover"
                );
                seq.last = all.last().map(|p| p.offset);
                self.insufficient(channel, ch);
                return;
            }
            last = p.offset;
            seq.live = true;
            fan_out(ch, p);
        }
        seq.last = Some(last);
        if filled {
            self.gaps_filled.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Notes the position a subscribe reply gave, so that a gap right after
    /// it is noticed. Until a publication has been delivered the lowest
    /// position given counts (publications in flight towards higher ones
    /// are still to come); after that, deliveries set the position. A reply
    /// in another epoch than the one known changes nothing here: the next
    /// publication, in the new epoch, sends every subscriber to recover
    /// (for this one, a resubscribe that finds nothing missing).
    pub fn observe_position(&self, channel: &str, offset: u64, epoch: &str) {
        if let Some(ch) = self.channels.shard(channel).read().get(channel) {
            let mut seq = ch.seq.lock();
            if !seq.live {
                seq.last = Some(seq.last.map_or(offset, |l| l.min(offset)));
            }
            if seq.epoch.is_none() {
                seq.epoch = Some(Arc::from(epoch));
            }
        }
    }

    /// Tells the subscribers of every channel that `positioned` accepts that
    /// they may have missed publications (after the broker reconnected), and
    /// forgets the channels' positions.
    pub fn resync(&self, positioned: impl Fn(&str) -> bool) {
        for shard in self.channels.shards.iter() {
            for (name, ch) in shard.read().iter() {
                *ch.seq.lock() = Seq::default();
                if positioned(name) {
                    self.insufficient(name, ch);
                }
            }
        }
    }

    pub fn has_channel(&self, channel: &str) -> bool {
        self.channels.shard(channel).read().contains_key(channel)
    }

    /// Hands a join or leave event to the local subscribers that want them.
    pub fn deliver_presence(&self, event: &Arc<PresenceEvent>) {
        let shard = self.channels.shard(&*event.channel).read();
        let Some(ch) = shard.get(&*event.channel) else {
            return;
        };
        let mut joining = ch.subs.values().filter(|s| s.join_leave).peekable();
        if joining.peek().is_none() {
            return;
        }
        let Some(frame) = frame(event.json_push().clone()) else {
            return;
        };
        for sub in joining {
            sub.client.deliver_presence(&frame);
        }
    }

    pub fn client(&self, client_id: &str) -> Option<ClientRef> {
        self.clients.shard(client_id).read().get(client_id).cloned()
    }

    pub fn user_clients(&self, user: &str) -> Vec<ClientRef> {
        self.users
            .shard(user)
            .read()
            .get(user)
            .map(|m| m.values().cloned().collect())
            .unwrap_or_default()
    }

    /// Channels with local subscribers and their subscriber counts.
    pub fn channels(&self) -> Vec<(String, usize)> {
        let mut out = Vec::new();
        for shard in self.channels.shards.iter() {
            out.extend(
                shard
                    .read()
                    .iter()
                    .map(|(name, ch)| (name.to_string(), ch.subs.len())),
            );
        }
        out
    }

    pub fn num_clients(&self) -> usize {
        self.num_clients.load(Ordering::Acquire)
    }

    pub fn num_users(&self) -> usize {
        self.users.shards.iter().map(|s| s.read().len()).sum()
    }

    pub fn num_channels(&self) -> usize {
        self.channels.shards.iter().map(|s| s.read().len()).sum()
    }

    pub fn num_subscriptions(&self) -> usize {
        self.num_subscriptions.load(Ordering::Relaxed)
    }
}

/// Hands a publication to the channel's subscribers that are not stale.
fn fan_out(ch: &Channel, publication: &Arc<Publication>) -> usize {
    let Some(frame) = frame(publication.json_push().clone()) else {
        return 0;
    };
    let mut n = 0;
    for sub in ch.subs.values() {
        if !sub.stale.load(Ordering::Acquire) {
            sub.client.deliver(publication, &frame);
            n += 1;
        }
    }
    n
}

impl Hub {
    /// A new stream read for `seq`'s channel, recorded as the one awaited.
    fn fill(&self, seq: &mut Seq, channel: Arc<str>, after: u64, covers: u64) -> Fill {
        let id = self.fills.fetch_add(1, Ordering::Relaxed) + 1;
        seq.fill_id = id;
        Fill {
            channel,
            after,
            epoch: seq.epoch.clone(),
            covers,
            id,
        }
    }

    /// Tells a channel's subscribers their state is insufficient (2500):
    /// they get nothing more until they resubscribe and recover.
    fn insufficient(&self, channel: &str, ch: &Channel) {
        self.resyncs.fetch_add(1, Ordering::Relaxed);
        let (code, reason) = herald_protocol::codes::unsubscribe::INSUFFICIENT;
        for sub in ch.subs.values() {
            if sub.stale.swap(true, Ordering::AcqRel) {
                continue;
            }
            sub.client.control(Control::Unsubscribe {
                channel: channel.to_string(),
                code,
                reason: reason.into(),
            });
        }
    }
}

#[cfg(test)]
mod tests;
