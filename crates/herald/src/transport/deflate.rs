//! WebSocket per-message compression (permessage-deflate, RFC 7692).
//!
//! The WebSocket library underneath has no extensions, and refuses frames
//! with the RSV1 bit that marks a compressed message. So compression lives
//! one layer lower, in the byte stream between the library and the socket
//! ([`Wire`]): frames read from the client are inflated before the library
//! parses them, and frames it writes are deflated on their way out. A
//! connection that did not negotiate compression reads and writes straight
//! through.
//!
//! Both directions are agreed without context takeover, so every message is
//! compressed on its own: the compressors and decompressors are one per
//! thread rather than one per connection (a deflate state is some 256 KiB),
//! and a compressed connection costs only its in-flight bytes.

mod offer;

use std::cell::RefCell;
use std::collections::VecDeque;
use std::io::{self, Cursor};
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use bytes::{Buf, BufMut, BytesMut};
use flate2::{Compress, Decompress, FlushCompress, FlushDecompress, Status};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio_tungstenite::tungstenite::protocol::frame::coding::{Data, OpCode};
use tokio_tungstenite::tungstenite::protocol::frame::FrameHeader;

pub use offer::{agree, Agreed};

/// How a server compresses, from `websocket.compression*`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Settings {
    /// zlib level, 0 (stored) to 9.
    pub level: u32,
    /// Messages shorter than this go out uncompressed.
    pub min_size: usize,
    /// Largest message a peer may send, counted after inflating.
    pub read_limit: usize,
}

impl Settings {
    /// What a client (the test kit, the load generator) compresses with:
    /// the fastest level, every message, messages up to 64 MiB.
    pub fn client() -> Self {
        Self {
            level: 1,
            min_size: 0,
            read_limit: 64 << 20,
        }
    }
}

/// Why reading a compressed message failed; carried inside the
/// `io::Error` the WebSocket library reports, so that the connection can
/// close with the right code.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Refused {
    #[error("a compressed message inflates past the size limit")]
    TooBig,
    #[error("a compressed message is not valid DEFLATE data")]
    Corrupt,
    /// A frame that cannot come where it came: a new message before a
    /// compressed one ended, or a fragment masked unlike the first.
    #[error("a frame out of place in a compressed message")]
    Protocol,
}

impl Refused {
    /// The refusal an I/O error carries, if it is one of ours.
    pub fn of(e: &io::Error) -> Option<Refused> {
        e.get_ref()?.downcast_ref::<Refused>().copied()
    }
}

impl From<Refused> for io::Error {
    fn from(r: Refused) -> Self {
        io::Error::new(io::ErrorKind::InvalidData, r)
    }
}

/// The stream under a WebSocket: `io` itself, or `io` with
/// permessage-deflate in between.
pub struct Wire<S> {
    io: S,
    deflate: Option<Box<Deflate>>,
}

impl<S> Wire<S> {
    /// Reads and writes go straight through.
    pub fn plain(io: S) -> Self {
        Self { io, deflate: None }
    }

    /// Frames are inflated on the way in and deflated on the way out, as
    /// agreed in the handshake.
    pub fn compressed(io: S, settings: Settings, agreed: Agreed) -> Self {
        Self {
            io,
            deflate: Some(Box::new(Deflate::new(settings, agreed))),
        }
    }

    /// A client's stream, from before its handshake (whose request must
    /// offer permessage-deflate): it compresses from the first frame after
    /// the server's answer if that answer agreed, else passes through.
    pub fn client(io: S, settings: Settings) -> Self {
        let mut deflate = Deflate::new(settings, Agreed::default());
        deflate.stage = Stage::Handshake;
        Self {
            io,
            deflate: Some(Box::new(deflate)),
        }
    }

    /// Whether this connection compresses.
    pub fn is_compressed(&self) -> bool {
        self.deflate
            .as_ref()
            .is_some_and(|d| d.stage == Stage::Frames)
    }

    pub fn get_ref(&self) -> &S {
        &self.io
    }
}

/// Largest frame header: 2 bytes, 8 of length, 4 of mask.
const MAX_HEADER: usize = 14;

/// Bytes read from the socket at once while compressing.
const READ_CHUNK: usize = 4096;

/// Deflated bytes waiting for the socket beyond which a write waits
/// (so a client that does not read holds back the writer as without
/// compression).
const HIGH_WATER: usize = 64 * 1024;

/// Slack over the size limit for a message's compressed bytes: DEFLATE can
/// grow incompressible data by a few bytes per block.
const COMPRESSED_SLACK: usize = 1024;

/// The longest handshake answer a client waits for before giving up on
/// compression.
const MAX_ANSWER: usize = 16 * 1024;

/// Where a connection is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stage {
    /// A client reading the server's answer, which says whether to
    /// compress.
    Handshake,
    /// Frames, compressed as agreed.
    Frames,
    /// The server did not agree: everything passes as it is.
    Plain,
}

/// The state of a compressing connection.
struct Deflate {
    settings: Settings,
    agreed: Agreed,
    stage: Stage,
    /// Bytes from the socket not yet taken apart.
    raw_in: BytesMut,
    /// Bytes for the WebSocket library, frames inflated.
    ready_in: BytesMut,
    /// Payload bytes of a frame passed through as it is, still to come.
    passing: u64,
    /// The message being read.
    reading: Reading,
    /// After a refusal, everything passes through untouched (the
    /// connection is closing and only drains what the client still sends).
    refused: bool,
    eof: bool,
    /// Bytes from the WebSocket library not yet a whole frame.
    raw_out: BytesMut,
    /// Bytes for the socket, frames deflated.
    wire_out: BytesMut,
    /// The library is writing a fragmented message; its frames pass.
    writing_fragments: bool,
}

/// Which message a continuation frame from the peer belongs to.
enum Reading {
    /// Between messages.
    Between,
    /// An uncompressed fragmented message: its frames pass through.
    Plain,
    /// A compressed fragmented message, its payload so far.
    Compressed {
        opcode: Data,
        masked: bool,
        data: Vec<u8>,
    },
}

impl Deflate {
    fn new(settings: Settings, agreed: Agreed) -> Self {
        Self {
            settings,
            agreed,
            stage: Stage::Frames,
            raw_in: BytesMut::new(),
            ready_in: BytesMut::new(),
            passing: 0,
            reading: Reading::Between,
            refused: false,
            eof: false,
            raw_out: BytesMut::new(),
            wire_out: BytesMut::new(),
            writing_fragments: false,
        }
    }

    /// Turns as much of `raw_in` as it can into `ready_in`.
    fn take_in(&mut self) -> Result<(), Refused> {
        if self.stage == Stage::Handshake {
            self.take_answer();
            return Ok(());
        }
        loop {
            if self.refused || self.stage == Stage::Plain {
                self.ready_in.unsplit(self.raw_in.split());
                return Ok(());
            }
            if self.passing > 0 {
                let n = self.raw_in.len().min(clamp(self.passing));
                self.ready_in.unsplit(self.raw_in.split_to(n));
                self.passing -= n as u64;
                if self.passing > 0 {
                    return Ok(());
                }
                continue;
            }
            let mut cursor = Cursor::new(&self.raw_in[..]);
            let (header, len) = match FrameHeader::parse(&mut cursor) {
                Ok(Some(parsed)) => parsed,
                Ok(None) => return Ok(()),
                Err(_) => {
                    // Not a frame: let the WebSocket library say so.
                    self.refused = true;
                    continue;
                }
            };
            let header_len = cursor.position() as usize;
            if let Reading::Compressed { masked, .. } = self.reading {
                let new_message = matches!(header.opcode, OpCode::Data(Data::Text | Data::Binary));
                if new_message || header.mask.is_some() != masked {
                    return Err(self.refuse(Refused::Protocol));
                }
            }
            if !self.is_compressed_part(&header) {
                self.pass_in(&header, header_len, len);
                continue;
            }
            let so_far = match &self.reading {
                Reading::Compressed { data, .. } => data.len(),
                _ => 0,
            };
            let room =
                (self.settings.read_limit.saturating_add(COMPRESSED_SLACK)).saturating_sub(so_far);
            if len > room as u64 {
                return Err(self.refuse(Refused::TooBig));
            }
            let len = len as usize;
            if self.raw_in.len() < header_len + len {
                // Wait for the whole frame (bounded by the limit above).
                return Ok(());
            }
            let (opcode, masked, mut data) =
                match std::mem::replace(&mut self.reading, Reading::Between) {
                    Reading::Compressed {
                        opcode,
                        masked,
                        data,
                    } => (opcode, masked, data),
                    _ => match header.opcode {
                        OpCode::Data(d) => (d, header.mask.is_some(), Vec::new()),
                        OpCode::Control(_) => unreachable!("only data frames start a message"),
                    },
                };
            self.raw_in.advance(header_len);
            let start = data.len();
            data.extend_from_slice(&self.raw_in[..len]);
            self.raw_in.advance(len);
            if let Some(mask) = header.mask {
                unmask(&mut data[start..], mask);
            }
            if !header.is_final {
                self.reading = Reading::Compressed {
                    opcode,
                    masked,
                    data,
                };
                continue;
            }
            data.extend_from_slice(&SYNC_TAIL);
            let message = match inflate(&data, self.settings.read_limit) {
                Ok(message) => message,
                Err(r) => return Err(self.refuse(r)),
            };
            let header = FrameHeader {
                is_final: true,
                rsv1: false,
                rsv2: false,
                rsv3: false,
                opcode: OpCode::Data(opcode),
                // A zero mask leaves the payload as it is; the library
                // wants a client's frames masked.
                mask: masked.then_some([0; 4]),
            };
            write_header(&header, message.len(), &mut self.ready_in);
            self.ready_in.extend_from_slice(&message);
            // One inflated message at a time: the rest waits in `raw_in`
            // until this one is read, so many small bombs in one read never
            // inflate together.
            return Ok(());
        }
    }

    /// A client's handshake answer: handed on alone (the frames after it
    /// must come through here, not with it), and read for whether the
    /// server agreed.
    fn take_answer(&mut self) {
        let Some(end) = self.raw_in.windows(4).position(|w| w == b"\r\n\r\n") else {
            if self.raw_in.len() > MAX_ANSWER {
                self.stage = Stage::Plain;
            }
            return;
        };
        let head = self.raw_in.split_to(end + 4);
        let agreed = String::from_utf8_lossy(&head).lines().any(|line| {
            line.split_once(':').is_some_and(|(name, value)| {
                name.trim().eq_ignore_ascii_case("sec-websocket-extensions")
                    && value.trim().starts_with("permessage-deflate")
            })
        });
        self.stage = if agreed { Stage::Frames } else { Stage::Plain };
        self.ready_in.unsplit(head);
    }

    /// Whether a frame from the peer is (part of) a compressed message
    /// to inflate; anything else passes through for the library to judge.
    fn is_compressed_part(&self, header: &FrameHeader) -> bool {
        if header.rsv2 || header.rsv3 {
            return false;
        }
        match (header.opcode, &self.reading) {
            (OpCode::Data(Data::Text | Data::Binary), Reading::Between) => header.rsv1,
            (OpCode::Data(Data::Continue), Reading::Compressed { .. }) => !header.rsv1,
            _ => false,
        }
    }

    /// Passes a frame's header on and its payload as it comes.
    fn pass_in(&mut self, header: &FrameHeader, header_len: usize, len: u64) {
        if let OpCode::Data(d) = header.opcode {
            self.reading = match (d, header.is_final) {
                (_, true) => Reading::Between,
                (Data::Continue, false) => std::mem::replace(&mut self.reading, Reading::Between),
                (_, false) => Reading::Plain,
            };
        }
        self.ready_in.unsplit(self.raw_in.split_to(header_len));
        self.passing = len;
    }

    fn refuse(&mut self, r: Refused) -> Refused {
        self.refused = true;
        self.reading = Reading::Between;
        r
    }

    /// Turns the whole frames in `raw_out` into `wire_out`, deflating
    /// whole data messages of at least `min_size` bytes.
    fn take_out(&mut self) -> io::Result<()> {
        if self.stage != Stage::Frames {
            // The request, or a connection that does not compress.
            self.wire_out.unsplit(self.raw_out.split());
            return Ok(());
        }
        loop {
            let mut cursor = Cursor::new(&self.raw_out[..]);
            let Some((mut header, len)) =
                FrameHeader::parse(&mut cursor).map_err(io::Error::other)?
            else {
                return Ok(());
            };
            let header_len = cursor.position() as usize;
            let whole = header_len + clamp(len);
            if self.raw_out.len() < whole {
                return Ok(());
            }
            let frame = self.raw_out.split_to(whole);
            let compress = match header.opcode {
                OpCode::Data(Data::Text | Data::Binary) if !self.writing_fragments => {
                    self.writing_fragments = !header.is_final;
                    header.is_final && !header.rsv1 && clamp(len) >= self.settings.min_size
                }
                OpCode::Data(_) => {
                    self.writing_fragments = !header.is_final;
                    false
                }
                OpCode::Control(_) => false,
            };
            if !compress {
                self.wire_out.unsplit(frame);
                continue;
            }
            let mut payload = frame[header_len..].to_vec();
            if let Some(mask) = header.mask {
                unmask(&mut payload, mask);
            }
            let mut packed = deflate_recent(
                &payload,
                self.settings.level,
                self.agreed.server_window_bits,
            )?;
            if packed.len() >= payload.len() {
                // Not worth it: a message may go out uncompressed.
                self.wire_out.unsplit(frame);
                continue;
            }
            header.rsv1 = true;
            write_header(&header, packed.len(), &mut self.wire_out);
            if let Some(mask) = header.mask {
                unmask(&mut packed, mask);
            }
            self.wire_out.extend_from_slice(&packed);
        }
    }
}

fn clamp(n: u64) -> usize {
    usize::try_from(n).unwrap_or(usize::MAX)
}

fn write_header(header: &FrameHeader, len: usize, out: &mut BytesMut) {
    out.reserve(MAX_HEADER + len);
    header
        .format(len as u64, &mut out.writer())
        .expect("writing to memory does not fail");
}

/// Masking and unmasking are the same XOR.
fn unmask(data: &mut [u8], mask: [u8; 4]) {
    for (i, b) in data.iter_mut().enumerate() {
        *b ^= mask[i & 3];
    }
}

/// What a sync flush ends with, left off each compressed message (RFC 7692
/// §7.2.1) and put back before inflating it.
const SYNC_TAIL: [u8; 4] = [0x00, 0x00, 0xff, 0xff];

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

/// [`deflate`], remembering the last few messages: a fan-out writes the
/// same message (or the same pair of messages) to many connections in a
/// row, and without context takeover its compressed form is the same for
/// all, so it is compressed once and copied after that.
fn deflate_recent(input: &[u8], level: u32, window_bits: u8) -> io::Result<Vec<u8>> {
    let key = (level, window_bits);
    if input.len() > RECENT_MAX {
        return deflate(input, level, window_bits);
    }
    let hit = RECENT.with_borrow(|recent| {
        recent
            .iter()
            .find(|r| r.key == key && r.input == input)
            .map(|r| r.output.clone())
    });
    if let Some(output) = hit {
        return Ok(output);
    }
    let output = deflate(input, level, window_bits)?;
    RECENT.with_borrow_mut(|recent| {
        if recent.len() == RECENT_COUNT {
            recent.pop_back();
        }
        recent.push_front(Recent {
            key,
            input: input.to_vec(),
            output: output.clone(),
        });
    });
    Ok(output)
}

/// One message compressed on its own, without the sync flush's tail.
fn deflate(input: &[u8], level: u32, window_bits: u8) -> io::Result<Vec<u8>> {
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
fn inflate(input: &[u8], limit: usize) -> Result<Vec<u8>, Refused> {
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

impl<S: AsyncRead + Unpin> AsyncRead for Wire<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let Some(d) = this.deflate.as_deref_mut() else {
            return Pin::new(&mut this.io).poll_read(cx, buf);
        };
        loop {
            if !d.ready_in.is_empty() {
                let n = d.ready_in.len().min(buf.remaining());
                buf.put_slice(&d.ready_in[..n]);
                d.ready_in.advance(n);
                if d.ready_in.is_empty() {
                    d.ready_in = BytesMut::new();
                }
                return Poll::Ready(Ok(()));
            }
            if d.eof {
                return Poll::Ready(Ok(()));
            }
            d.take_in()?;
            if !d.ready_in.is_empty() {
                continue;
            }
            if d.raw_in.is_empty() {
                // An idle connection keeps no buffer.
                d.raw_in = BytesMut::new();
            }
            d.raw_in.reserve(READ_CHUNK);
            let mut room = (&mut d.raw_in).limit(READ_CHUNK);
            if ready!(tokio_util::io::poll_read_buf(
                Pin::new(&mut this.io),
                cx,
                &mut room
            ))? == 0
            {
                d.eof = true;
            }
        }
    }
}

impl<S: AsyncWrite + Unpin> Wire<S> {
    /// Writes what is deflated to the socket until it is written or the
    /// socket is full.
    fn poll_drain(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let Some(d) = self.deflate.as_deref_mut() else {
            return Poll::Ready(Ok(()));
        };
        while !d.wire_out.is_empty() {
            let n = ready!(Pin::new(&mut self.io).poll_write(cx, &d.wire_out))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            d.wire_out.advance(n);
        }
        // A quiet connection keeps no buffer.
        d.wire_out = BytesMut::new();
        Poll::Ready(Ok(()))
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Wire<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if this.deflate.is_none() {
            return Pin::new(&mut this.io).poll_write(cx, buf);
        }
        if let Poll::Ready(Err(e)) = this.poll_drain(cx) {
            return Poll::Ready(Err(e));
        }
        let d = this.deflate.as_deref_mut().expect("checked above");
        if d.wire_out.len() >= HIGH_WATER {
            // The socket is full and said it will wake the task.
            return Poll::Pending;
        }
        d.raw_out.extend_from_slice(buf);
        d.take_out()?;
        if d.raw_out.is_empty() {
            d.raw_out = BytesMut::new();
        }
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        ready!(this.poll_drain(cx))?;
        Pin::new(&mut this.io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        ready!(this.poll_drain(cx))?;
        Pin::new(&mut this.io).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests;
