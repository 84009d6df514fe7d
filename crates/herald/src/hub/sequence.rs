//! The delivery order of one channel's positioned publications: in offset
//! order, without gaps, each once. A pure state machine: it is told what
//! arrived (from the broker, from a read of the stream, from a subscribe
//! reply) and answers what the hub should do — deliver, hold back, read the
//! stream to fill a gap, or send the channel's subscribers to recover.
//!
//! Publications can arrive out of order (published on different nodes), be
//! lost between nodes, or belong to a stream that started over (a new
//! epoch). A late one at or below the last delivered offset is dropped. One
//! that skips offsets is held back while the missing ones are read from the
//! stream; everything then goes out in order. A gap that opens while that
//! read runs, past what it could see, is read again. Only an offset the
//! stream should have had but lacks, a new epoch, a gap wider than the node
//! reads ([`Reads::max_gap`]), or more held back than [`MAX_HELD`] /
//! [`MAX_HELD_BYTES`] make subscribers recover by themselves.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use herald_protocol::Publication;

/// Most publications held back while a gap is read; beyond it the read is
/// abandoned and subscribers recover by themselves.
pub const MAX_HELD: usize = 10_000;
/// Most payload bytes held back while a gap is read (as [`MAX_HELD`]).
pub const MAX_HELD_BYTES: usize = 16 << 20;

/// A read of a channel's stream that the sequence asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fill {
    pub channel: Arc<str>,
    /// Publications after this offset are wanted.
    pub after: u64,
    /// The epoch the sequence knows for the stream, if any.
    pub epoch: Option<Arc<str>>,
    /// The highest offset the read must see: publications are delivered
    /// only once stored, so every offset up to the highest one held when
    /// the read started is in the stream when it is read.
    covers: u64,
    /// Tells this read from every other: one no longer awaited (the
    /// channel resynced or started over meanwhile) changes nothing.
    id: u64,
}

/// Hands out read ids, unique for the life of the process: a channel that
/// empties and comes back must not take an old read for its own.
#[derive(Debug, Default)]
pub struct FillIds(AtomicU64);

impl FillIds {
    fn next(&self) -> u64 {
        self.0.fetch_add(1, Ordering::Relaxed) + 1
    }
}

/// How the node reads gaps from streams.
#[derive(Debug, Clone, Copy)]
pub struct Reads<'a> {
    pub ids: &'a FillIds,
    /// Most publications one read returns: a wider gap is not read (the
    /// subscribers recover by themselves, as they would from a read that
    /// came back short).
    pub max_gap: u64,
}

/// What to do with a publication the sequence has seen.
#[derive(Debug)]
pub enum Verdict {
    /// Deliver it now.
    Deliver,
    /// Nothing now: already delivered, or held back until a read ends.
    Skip,
    /// It is held back; read the stream for what is missing before it.
    Fill(Fill),
    /// Subscribers' state is insufficient: send them to recover.
    Resync(Why),
}

/// Why subscribers must recover by themselves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Why {
    /// The stream started over (a new epoch).
    NewEpoch,
    /// Offsets were skipped and the node does not read them (no reads, or
    /// a gap wider than it reads).
    Gap,
    /// More was held back than [`MAX_HELD`] / [`MAX_HELD_BYTES`].
    TooMuchHeld,
}

/// What a finished read lets go out, and what comes after.
#[derive(Debug)]
pub struct Filled {
    /// Publications to deliver, in order.
    pub deliver: Vec<Arc<Publication>>,
    pub then: Then,
}

#[derive(Debug, PartialEq, Eq)]
pub enum Then {
    /// Caught up; `filled` when the stream supplied what was missing.
    Done { filled: bool },
    /// A gap past what the read could see: read again.
    Fill(Fill),
    /// The stream lacks an offset, or could not be read: subscribers
    /// recover.
    Resync,
}

/// Where a channel's delivery stands.
#[derive(Debug, Default)]
pub struct Sequence {
    /// Last offset delivered or given to a subscriber; `None` until known.
    last: Option<u64>,
    /// A publication has been delivered (until then `last` comes from
    /// subscribe replies).
    live: bool,
    /// The epoch of the stream those offsets belong to, once known.
    epoch: Option<Arc<str>>,
    /// Publications held back while a gap is read, and their payload bytes.
    held: Option<Vec<Arc<Publication>>>,
    held_bytes: usize,
    /// The id of the read under way (0: none).
    fill_id: u64,
}

impl Sequence {
    /// Sees a positioned publication (offset > 0). `reads` is `None` when
    /// gaps cannot be read from the stream.
    pub fn accept(&mut self, p: &Arc<Publication>, reads: Option<Reads<'_>>) -> Verdict {
        let offset = p.offset;
        match (&p.epoch, &self.epoch) {
            (Some(new), Some(known)) if new != known => {
                *self = Sequence {
                    last: Some(offset),
                    epoch: Some(new.clone()),
                    ..Sequence::default()
                };
                return Verdict::Resync(Why::NewEpoch);
            }
            (Some(new), None) => self.epoch = Some(new.clone()),
            _ => {}
        }
        if let Some(held) = self.held.as_mut() {
            held.push(p.clone());
            self.held_bytes += p.data.len();
            if held.len() > MAX_HELD || self.held_bytes > MAX_HELD_BYTES {
                self.drop_held(Some(offset));
                return Verdict::Resync(Why::TooMuchHeld);
            }
            return Verdict::Skip;
        }
        let last = match self.last {
            Some(last) if offset <= last => return Verdict::Skip,
            Some(last) if offset != last + 1 => last,
            _ => {
                self.last = Some(offset);
                self.live = true;
                return Verdict::Deliver;
            }
        };
        match reads {
            Some(reads) if offset - last <= reads.max_gap => {
                self.held = Some(vec![p.clone()]);
                self.held_bytes = p.data.len();
                Verdict::Fill(self.fill(reads.ids, p.channel.clone(), last, offset))
            }
            _ => {
                self.last = Some(offset);
                Verdict::Resync(Why::Gap)
            }
        }
    }

    /// Ends a read started by [`Sequence::accept`] or asked for again:
    /// what the stream held after the gap (`None` when the read failed)
    /// and what was held back go out in order. `None` when the read is no
    /// longer awaited.
    pub fn finish(
        &mut self,
        fill: &Fill,
        from_stream: Option<Vec<Arc<Publication>>>,
        ids: &FillIds,
    ) -> Option<Filled> {
        if self.fill_id != fill.id {
            return None;
        }
        self.fill_id = 0;
        let held = self.held.take()?;
        self.held_bytes = 0;
        let filled = from_stream.is_some();
        let mut all = from_stream.unwrap_or_default();
        all.extend(held);
        all.sort_by_key(|p| p.offset);
        all.dedup_by_key(|p| p.offset);
        let mut last = self.last.unwrap_or(0);
        let mut deliver = Vec::with_capacity(all.len());
        let seen = last;
        let mut rest = all.into_iter().skip_while(|p| p.offset <= seen).peekable();
        while let Some(next) = rest.peek() {
            if next.offset != last + 1 {
                break;
            }
            last = next.offset;
            deliver.extend(rest.next());
        }
        let rest: Vec<_> = rest.collect();
        if !deliver.is_empty() {
            self.live = true;
        }
        let then = match rest.last() {
            None => {
                self.last = Some(last);
                Then::Done { filled }
            }
            // Past what this read could see: publications that overtook
            // others while it ran. Read again.
            Some(newest) if filled && last + 1 > fill.covers => {
                let covers = newest.offset;
                self.last = Some(last);
                self.held_bytes = rest.iter().map(|p| p.data.len()).sum();
                self.held = Some(rest);
                Then::Fill(self.fill(ids, fill.channel.clone(), last, covers))
            }
            Some(newest) => {
                self.last = Some(newest.offset);
                Then::Resync
            }
        };
        Some(Filled { deliver, then })
    }

    /// Notes the position a subscribe reply gave, so that a gap right
    /// after it is noticed. Until a publication has been delivered the
    /// lowest position given counts (publications in flight towards higher
    /// ones are still to come); after that, deliveries set the position. A
    /// reply in another epoch changes nothing here: the next publication,
    /// in the new epoch, sends every subscriber to recover.
    pub fn observe(&mut self, offset: u64, epoch: &str) {
        if !self.live {
            self.last = Some(self.last.map_or(offset, |l| l.min(offset)));
        }
        if self.epoch.is_none() {
            self.epoch = Some(Arc::from(epoch));
        }
    }

    fn drop_held(&mut self, last: Option<u64>) {
        self.held = None;
        self.held_bytes = 0;
        self.last = last;
    }

    /// A new read for this channel, recorded as the one awaited.
    fn fill(&mut self, ids: &FillIds, channel: Arc<str>, after: u64, covers: u64) -> Fill {
        self.fill_id = ids.next();
        Fill {
            channel,
            after,
            epoch: self.epoch.clone(),
            covers,
            id: self.fill_id,
        }
    }
}

#[cfg(test)]
mod tests;
