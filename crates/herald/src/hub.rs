//! The hub: which local connections are subscribed to which channel, and which
//! connections each user has. Fan-out takes a read lock on one shard and hands
//! every subscriber the same shared publication; it never waits on a socket.
//! The hub knows nothing of formats or transports: a connection is a
//! [`Client`], which encodes what it is handed in its own format. The order
//! of positioned publications is kept by each channel's [`Sequence`].

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};

use bytes::Bytes;
use herald_protocol::filter::FilterNode;
use herald_protocol::{Disconnect, PresenceEvent, Publication};
use parking_lot::Mutex;

use crate::auth::Overrides;
use crate::sharded::Sharded;
use crate::wire::control::Position;
use members::Members;
use sequence::{FillIds, Reads, Sequence, Then, Verdict};

pub use delta::{as_text, Forms};
pub use sequence::{Fill, MAX_HELD};

mod delta;
mod members;
mod sequence;

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
    Subscribe(Box<ServerSubscribe>),
    /// Replace the connection's expiry (`None`: never) or mark it expired.
    Refresh {
        expired: bool,
        expire_at: Option<i64>,
        info: Option<Bytes>,
    },
    /// An asynchronous message to the client.
    Message(Bytes),
    /// Commands an emulated connection's client posted to the emulation
    /// endpoint, in its format: handled as if they came over the stream.
    Emulate(Bytes),
    /// Access rules changed: close the connection, or end subscriptions,
    /// whose user is blocked or whose token was revoked.
    CheckAccess,
    /// How many subscribers a channel the connection is subscribed to has
    /// over the cluster, counted from `at` (Unix ms); only Pusher sockets
    /// tell their clients.
    Count {
        channel: Arc<str>,
        count: u64,
        at: i64,
    },
}

/// A subscription the server API asks a connection to make.
#[derive(Debug, Clone)]
pub struct ServerSubscribe {
    pub channel: String,
    /// Channel info shown with the client's publications and presence.
    pub info: Option<Bytes>,
    /// Sent to the client with the subscribe push.
    pub data: Option<Bytes>,
    pub expire_at: Option<i64>,
    pub overrides: Overrides,
    /// Recover from here (the server API's `recover_since`).
    pub recover_since: Option<Position>,
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
    /// The transport it came over (`websocket`, `uni_sse`, …), for
    /// operators' eyes.
    fn transport(&self) -> &'static str {
        ""
    }
    /// The format it speaks (`json` or `protobuf`).
    fn protocol(&self) -> &'static str {
        "json"
    }
    /// Queue a publication, in the client's own format; never blocks. A
    /// client that cannot keep up disconnects itself.
    fn deliver(&self, publication: &Arc<Publication>);
    /// Queue a publication for a subscription with delta compression: as a
    /// delta when the client has its base, else whole (see [`Forms`]).
    /// Clients without deltas take it as it is.
    fn deliver_delta(&self, forms: &Forms<'_>) {
        self.deliver(forms.publication());
    }
    /// Queue a join or leave event, like a publication.
    fn deliver_presence(&self, event: &Arc<PresenceEvent>);
    fn control(&self, control: Control);
}

type ClientRef = Arc<dyn Client>;

/// Starts reading a channel's stream to fill a gap; the reader hands the
/// request back with what it found to [`Hub::finish_fill`] (`None` if the
/// read failed, as it does when the stream is no longer in that epoch).
pub type Filler = Arc<dyn Fn(Fill) + Send + Sync>;

/// The local subscribers of one channel and where its delivery stands.
#[derive(Default)]
struct Channel {
    subs: Members<Sub>,
    /// Where its positioned publications stand; made by the first one (or
    /// the first position a subscribe reply gives), so that a channel
    /// without offsets never holds one, and dropped on resync.
    seq: Mutex<Option<Box<Sequence>>>,
    /// Subscribers with delta compression, and while there are any, the
    /// last positioned publication fanned out (the next one's base).
    delta_subs: AtomicUsize,
    last: Mutex<Option<Arc<Publication>>>,
}

/// How a subscriber gets a channel's messages.
#[derive(Debug, Default, Clone)]
pub struct Delivery {
    /// Join/leave events too.
    pub join_leave: bool,
    /// Only publications whose tags pass.
    pub filter: Option<Arc<FilterNode>>,
    /// Publications as Fossil deltas where they can be.
    pub delta: bool,
}

/// One subscription in the hub.
struct Sub {
    client: ClientRef,
    /// Receives join/leave events of the channel.
    join_leave: bool,
    /// Told its state is insufficient: gets nothing more until it leaves
    /// (and subscribes again, recovering from the stream).
    stale: AtomicBool,
    /// Publications whose tags do not pass it are not its.
    filter: Option<Arc<FilterNode>>,
    delta: bool,
}

/// Why a connection was not admitted.
#[derive(Debug, PartialEq, Eq)]
pub enum Refused {
    NodeLimit,
    UserLimit,
}

/// Channel subscriptions and connection registry of this node.
#[derive(Default)]
pub struct Hub {
    channels: Sharded<Arc<str>, Channel>,
    clients: Sharded<Arc<str>, ClientRef>,
    users: Sharded<String, HashMap<u64, ClientRef>>,
    /// Emulated connections (HTTP-streaming, SSE) by their session, which
    /// only their client knows: where emulation requests find them.
    sessions: Sharded<Arc<str>, ClientRef>,
    num_clients: AtomicUsize,
    num_subscriptions: AtomicUsize,
    /// Reads gaps from streams, and the widest gap it reads.
    filler: OnceLock<(Filler, u64)>,
    fill_ids: FillIds,
    /// Gaps in positioned channels filled from the stream, and times a
    /// channel's subscribers were sent to recover by themselves.
    gaps_filled: AtomicU64,
    resyncs: AtomicU64,
    /// Publications, joins and leaves handed to local subscribers: one add
    /// per message, of its subscriber count.
    sent: [AtomicU64; 3],
}

/// Which of [`Hub::sent_counts`].
const PUBLICATIONS: usize = 0;
const JOINS: usize = 1;
const LEAVES: usize = 2;

impl Hub {
    pub fn new() -> Self {
        Self::default()
    }

    /// (gaps filled from streams, channel resyncs) so far.
    pub fn gap_counts(&self) -> (u64, u64) {
        (
            self.gaps_filled.load(Ordering::Relaxed),
            self.resyncs.load(Ordering::Relaxed),
        )
    }

    /// Lets the hub fill gaps of up to `max_gap` offsets in positioned
    /// channels from their streams; without a filler, or past that width, a
    /// gap makes subscribers recover by themselves.
    pub fn set_filler(&self, filler: Filler, max_gap: u64) {
        let _ = self.filler.set((filler, max_gap));
    }

    fn reads(&self) -> Option<Reads<'_>> {
        self.filler.get().map(|(_, max_gap)| Reads {
            ids: &self.fill_ids,
            max_gap: *max_gap,
        })
    }

    fn read(&self, fill: Fill) {
        if let Some((filler, _)) = self.filler.get() {
            filler(fill);
        }
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
            let mut shard = self.users.write(&user);
            let conns = shard.entry(user).or_default();
            if user_limit > 0 && !client.user().is_empty() && conns.len() >= user_limit {
                drop(shard);
                self.num_clients.fetch_sub(1, Ordering::AcqRel);
                return Err(Refused::UserLimit);
            }
            conns.insert(client.key(), client.clone());
        }
        let id = client.shared_id();
        self.clients.write(&*id).insert(id, client);
        Ok(())
    }

    pub fn remove_client(&self, client: &dyn Client) {
        let id = client.client_id();
        if self.clients.write(id).remove(id).is_none() {
            return;
        }
        self.num_clients.fetch_sub(1, Ordering::AcqRel);
        let mut shard = self.users.write(client.user());
        if let Some(conns) = shard.get_mut(client.user()) {
            conns.remove(&client.key());
            if conns.is_empty() {
                shard.remove(client.user());
            }
        }
    }

    /// Adds a subscriber; true when it is the channel's first on this node.
    pub fn subscribe(&self, channel: &str, client: ClientRef, join_leave: bool) -> bool {
        let delivery = Delivery {
            join_leave,
            ..Delivery::default()
        };
        self.subscribe_with(channel, client, delivery)
    }

    /// Adds a subscriber that gets the channel's messages as `delivery`
    /// says; true when it is the channel's first on this node.
    pub fn subscribe_with(&self, channel: &str, client: ClientRef, delivery: Delivery) -> bool {
        let mut shard = self.channels.write(channel);
        let (first, ch) = match shard.get_mut(channel) {
            Some(ch) => (false, ch),
            None => (true, shard.entry(Arc::from(channel)).or_default()),
        };
        let sub = Sub {
            client,
            join_leave: delivery.join_leave,
            stale: AtomicBool::new(false),
            filter: delivery.filter,
            delta: delivery.delta,
        };
        if sub.delta {
            ch.delta_subs.fetch_add(1, Ordering::Relaxed);
        }
        match ch.subs.insert(sub.client.key(), sub) {
            None => {
                self.num_subscriptions.fetch_add(1, Ordering::Relaxed);
            }
            Some(old) if old.delta => {
                if ch.delta_subs.fetch_sub(1, Ordering::Relaxed) == 1 {
                    *ch.last.lock() = None;
                }
            }
            Some(_) => {}
        }
        first
    }

    /// Removes a subscriber; true when the channel has none left on this node.
    pub fn unsubscribe(&self, channel: &str, key: u64) -> bool {
        let mut shard = self.channels.write(channel);
        let Some(subs) = shard.get_mut(channel) else {
            return false;
        };
        if let Some(sub) = subs.subs.remove(key) {
            self.num_subscriptions.fetch_sub(1, Ordering::Relaxed);
            if sub.delta && subs.delta_subs.fetch_sub(1, Ordering::Relaxed) == 1 {
                *subs.last.lock() = None;
            }
        }
        if subs.subs.is_empty() {
            shard.remove(channel);
            return true;
        }
        false
    }

    /// Hands a publication to every local subscriber of its channel; returns
    /// how many there were. Positioned publications (offset > 0) go out in
    /// offset order, without gaps, each once, as the channel's
    /// [`Sequence`] decides; its verdicts are carried out here while the
    /// channel's sequence is locked, so that nothing overtakes them.
    pub fn deliver(&self, publication: &Arc<Publication>) -> usize {
        let n = self.deliver_in_order(publication);
        if n > 0 {
            self.sent[PUBLICATIONS].fetch_add(n as u64, Ordering::Relaxed);
        }
        n
    }

    fn deliver_in_order(&self, publication: &Arc<Publication>) -> usize {
        let shard = self.channels.read(&*publication.channel);
        let Some(ch) = shard.get(&*publication.channel) else {
            return 0;
        };
        if publication.offset == 0 {
            return fan_out(ch, publication);
        }
        let mut seq = ch.seq.lock();
        let seq = seq.get_or_insert_with(Box::default);
        match seq.accept(publication, self.reads()) {
            Verdict::Deliver => fan_out(ch, publication),
            Verdict::Skip => 0,
            Verdict::Fill(fill) => {
                self.read(fill);
                0
            }
            Verdict::Resync(why) => {
                tracing::info!(
                    channel = &*publication.channel,
                    offset = publication.offset,
                    ?why,
                    "positioned delivery cannot go on: subscribers recover"
                );
                self.insufficient(&publication.channel, ch);
                0
            }
        }
    }

    /// Completes a read started by [`Hub::deliver`] with what the stream
    /// held (`None` if the read failed): delivers what it allows, in order,
    /// and does what the channel's sequence says next.
    pub fn finish_fill(&self, fill: Fill, from_stream: Option<Vec<Arc<Publication>>>) {
        let shard = self.channels.read(&*fill.channel);
        let Some(ch) = shard.get(&*fill.channel) else {
            return;
        };
        let mut seq = ch.seq.lock();
        // A sequence reset meanwhile awaits no read.
        let Some(seq) = seq.as_mut() else {
            return;
        };
        let Some(filled) = seq.finish(&fill, from_stream, &self.fill_ids) else {
            return;
        };
        let sent: usize = filled.deliver.iter().map(|p| fan_out(ch, p)).sum();
        self.sent[PUBLICATIONS].fetch_add(sent as u64, Ordering::Relaxed);
        match filled.then {
            Then::Done { filled } => {
                if filled {
                    self.gaps_filled.fetch_add(1, Ordering::Relaxed);
                }
            }
            Then::Fill(again) => self.read(again),
            Then::Resync => {
                tracing::info!(
                    channel = &*fill.channel,
                    after = fill.after,
                    "offsets missing from the stream: subscribers recover"
                );
                self.insufficient(&fill.channel, ch);
            }
        }
    }

    /// Notes the position a subscribe reply gave (see [`Sequence::observe`]).
    pub fn observe_position(&self, channel: &str, offset: u64, epoch: &str) {
        if let Some(ch) = self.channels.read(channel).get(channel) {
            let mut seq = ch.seq.lock();
            seq.get_or_insert_with(Box::default).observe(offset, epoch);
        }
    }

    /// Tells the subscribers of every channel that `positioned` accepts that
    /// they may have missed publications (after the broker reconnected), and
    /// forgets the channels' positions.
    pub fn resync(&self, positioned: impl Fn(&str) -> bool) {
        for shard in self.channels.each_shard() {
            for (name, ch) in shard.iter() {
                *ch.seq.lock() = None;
                if positioned(name) {
                    self.insufficient(name, ch);
                }
            }
        }
    }

    /// How many local subscribers `channel` has.
    pub fn subscribers(&self, channel: &str) -> usize {
        self.channels
            .read(channel)
            .get(channel)
            .map_or(0, |ch| ch.subs.len())
    }

    /// The local subscribers of `channel` that `wanted` picks.
    pub fn subscribers_where(
        &self,
        channel: &str,
        wanted: impl Fn(&dyn Client) -> bool,
    ) -> Vec<ClientRef> {
        let shard = self.channels.read(channel);
        let Some(ch) = shard.get(channel) else {
            return Vec::new();
        };
        let subs = ch.subs.values().filter(|s| wanted(&*s.client));
        subs.map(|s| s.client.clone()).collect()
    }

    pub fn has_channel(&self, channel: &str) -> bool {
        self.channels.read(channel).contains_key(channel)
    }

    /// Hands a join or leave event to the local subscribers that want them.
    pub fn deliver_presence(&self, event: &Arc<PresenceEvent>) {
        let shard = self.channels.read(&*event.channel);
        let Some(ch) = shard.get(&*event.channel) else {
            return;
        };
        let mut sent = 0;
        for sub in ch.subs.values().filter(|s| s.join_leave) {
            sub.client.deliver_presence(event);
            sent += 1;
        }
        let kind = if event.join { JOINS } else { LEAVES };
        self.sent[kind].fetch_add(sent, Ordering::Relaxed);
    }

    /// Makes an emulated connection findable by its session.
    pub fn add_session(&self, session: &str, client: ClientRef) {
        let session: Arc<str> = Arc::from(session);
        self.sessions.write(&*session).insert(session, client);
    }

    pub fn remove_session(&self, session: &str) {
        self.sessions.write(session).remove(session);
    }

    /// The emulated connection of `session`, if it is here.
    pub fn by_session(&self, session: &str) -> Option<ClientRef> {
        self.sessions.read(session).get(session).cloned()
    }

    pub fn client(&self, client_id: &str) -> Option<ClientRef> {
        self.clients.read(client_id).get(client_id).cloned()
    }

    /// Every local connection.
    pub fn all_clients(&self) -> Vec<ClientRef> {
        let mut out = Vec::with_capacity(self.clients.len());
        for shard in self.clients.each_shard() {
            out.extend(shard.values().cloned());
        }
        out
    }

    pub fn user_clients(&self, user: &str) -> Vec<ClientRef> {
        self.users
            .read(user)
            .get(user)
            .map(|m| m.values().cloned().collect())
            .unwrap_or_default()
    }

    /// Channels with local subscribers and their subscriber counts.
    pub fn channels(&self) -> Vec<(String, usize)> {
        let mut out = Vec::new();
        for shard in self.channels.each_shard() {
            out.extend(
                shard
                    .iter()
                    .map(|(name, ch)| (name.to_string(), ch.subs.len())),
            );
        }
        out
    }

    /// The channels each local subscriber (by key) is subscribed to: a
    /// walk over every channel, for operators' occasional questions.
    pub fn channels_by_client(&self) -> HashMap<u64, Vec<Arc<str>>> {
        let mut out: HashMap<u64, Vec<Arc<str>>> = HashMap::new();
        for shard in self.channels.each_shard() {
            for (name, ch) in shard.iter() {
                for sub in ch.subs.values() {
                    out.entry(sub.client.key()).or_default().push(name.clone());
                }
            }
        }
        out
    }

    /// Publications, joins and leaves handed to local subscribers since
    /// start.
    pub fn sent_counts(&self) -> [u64; 3] {
        self.sent.each_ref().map(|n| n.load(Ordering::Relaxed))
    }

    pub fn num_clients(&self) -> usize {
        self.num_clients.load(Ordering::Acquire)
    }

    pub fn num_users(&self) -> usize {
        self.users.len()
    }

    pub fn num_channels(&self) -> usize {
        self.channels.len()
    }

    pub fn num_subscriptions(&self) -> usize {
        self.num_subscriptions.load(Ordering::Relaxed)
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

/// Hands a publication to the channel's subscribers that are not stale.
/// Positioned publications come here in order (under the channel's
/// sequence), so with delta subscribers the last one is the next's base.
fn fan_out(ch: &Channel, publication: &Arc<Publication>) -> usize {
    let prev = match ch.delta_subs.load(Ordering::Relaxed) {
        0 => None,
        _ if publication.offset == 0 => None,
        _ => ch.last.lock().replace(publication.clone()),
    };
    let forms = Forms::new(publication, prev.as_deref());
    let mut n = 0;
    for sub in ch.subs.values() {
        if sub.stale.load(Ordering::Acquire) {
            continue;
        }
        if let Some(filter) = &sub.filter {
            if !filter.matches(&publication.tags) {
                continue;
            }
        }
        if sub.delta {
            sub.client.deliver_delta(&forms);
        } else {
            sub.client.deliver(publication);
        }
        n += 1;
    }
    n
}

#[cfg(test)]
mod tests;
