//! zlib for permessage-deflate without context takeover: every message
//! compressed and inflated on its own, by one compressor (per level and
//! window) and one decompressor per thread.

use std::cell::RefCell;
use std::collections::VecDeque;
use std::io;

use flate2::{Compress, Decompress, FlushCompress, FlushDecompress, Status};

use super::Refused;

/// What a sync flush ends with, left off each compressed message (RFC 7692
/// §7.2.1) and put back before inflating it.
pub(super) const SYNC_TAIL: [u8; 4] = [0x00, 0x00, 0xff, 0xff];

thread_local! {
    /// This thread's compressors, by level and window.
    static COMPRESSORS: RefCell<Vec<((u32, u8), Compress)>> = const { RefCell::new(Vec::new()) };
    /// This thread's decompressor (a full window reads any peer's).
    static DECOMPRESSOR: RefCell<Option<Decompress>> = const { RefCell::new(None) };
    /// The last messages this thread compressed, newest first.
    static RECENT: RefCell<VecDeque<Recent>> = const { RefCell::new(VecDeque::new()) };
}

/// A message compressed lately, and its compressed form.
struct Recent {
    key: (u32, u8),
    input: Vec<u8>,
    output: Vec<u8>,
}

/// How many compressed messages a thread remembers.
const RECENT_COUNT: usize = 4;

/// Longest message remembered.
const RECENT_MAX: usize = 16 * 1024;

/// [`deflate`]d `input` handed to `then`, remembering the last few
/// messages: a fan-out writes the same message (or the same pair of
/// messages) to many connections in a row, and without context takeover
/// its compressed form is the same for all, so it is compressed once and
/// read from memory after that.
pub(super) fn deflated<R>(
    input: &[u8],
    level: u32,
    window_bits: u8,
    then: impl FnOnce(&[u8]) -> R,
) -> io::Result<R> {
    let key = (level, window_bits);
    if input.len() > RECENT_MAX {
        return Ok(then(&deflate(input, level, window_bits)?));
    }
    RECENT.with_borrow_mut(|recent| {
        if let Some(r) = recent.iter().find(|r| r.key == key && r.input == input) {
            return Ok(then(&r.output));
        }
        let output = deflate(input, level, window_bits)?;
        if recent.len() == RECENT_COUNT {
            recent.pop_back();
        }
        recent.push_front(Recent {
            key,
            input: input.to_vec(),
            output,
        });
        Ok(then(&recent[0].output))
    })
}

/// One message compressed on its own, without the sync flush's tail.
pub(super) fn deflate(input: &[u8], level: u32, window_bits: u8) -> io::Result<Vec<u8>> {
    COMPRESSORS.with_borrow_mut(|all| {
        let key = (level, window_bits);
        let at = match all.iter().position(|(k, _)| *k == key) {
            Some(at) => at,
            None => {
                let c = Compress::new_with_window_bits(
                    flate2::Compression::new(level),
                    false,
                    window_bits,
                );
                all.push((key, c));
                all.len() - 1
            }
        };
        let c = &mut all[at].1;
        c.reset();
        let mut out = Vec::with_capacity(input.len() / 2 + 64);
        loop {
            let done = c.total_in() as usize;
            c.compress_vec(&input[done..], &mut out, FlushCompress::Sync)
                .map_err(io::Error::other)?;
            if c.total_in() as usize == input.len() && out.len() < out.capacity() {
                break;
            }
            out.reserve(out.capacity());
        }
        if out.ends_with(&SYNC_TAIL) {
            out.truncate(out.len() - SYNC_TAIL.len());
        }
        Ok(out)
    })
}

/// One message inflated on its own, refused as soon as it passes `limit`
/// bytes (so a small bomb never becomes a large allocation).
pub(super) fn inflate(input: &[u8], limit: usize) -> Result<Vec<u8>, Refused> {
    DECOMPRESSOR.with_borrow_mut(|d| {
        let d = d.get_or_insert_with(|| Decompress::new(false));
        d.reset(false);
        let cap = limit.saturating_add(1);
        let first = input.len().saturating_mul(4).max(256).min(cap);
        let mut out = vec![0u8; first];
        let mut written = 0;
        loop {
            let (in_before, out_before) = (d.total_in(), d.total_out());
            let status = d
                .decompress(
                    &input[in_before as usize..],
                    &mut out[written..],
                    FlushDecompress::Sync,
                )
                .map_err(|_| Refused::Corrupt)?;
            written += (d.total_out() - out_before) as usize;
            if written > limit {
                return Err(Refused::TooBig);
            }
            let consumed = d.total_in() as usize == input.len();
            let progress = d.total_in() != in_before || d.total_out() != out_before;
            if (consumed && written < out.len()) || status == Status::StreamEnd {
                break;
            }
            if written == out.len() {
                out.resize((out.len() * 2).min(cap), 0);
            } else if !progress {
                return Err(Refused::Corrupt);
            }
        }
        out.truncate(written);
        Ok(out)
    })
}
