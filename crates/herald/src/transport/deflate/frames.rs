//! Taking a compressing connection's frames apart and putting them back:
//! compressed messages from the peer inflated into plain frames for the
//! WebSocket library, the library's data frames deflated and marked on
//! their way out, everything else passed through for the library to judge.

use std::borrow::Cow;
use std::io::{self, Cursor};

use bytes::{Buf, BufMut, BytesMut};
use tokio_tungstenite::tungstenite::protocol::frame::coding::{Data, OpCode};
use tokio_tungstenite::tungstenite::protocol::frame::FrameHeader;

use super::zlib::{deflated, inflate, SYNC_TAIL};
use super::{Agreed, Refused, Settings};

/// Largest frame header: 2 bytes, 8 of length, 4 of mask.
pub(super) const MAX_HEADER: usize = 14;

/// Slack over the size limit for a message's compressed bytes: DEFLATE can
/// grow incompressible data by a few bytes per block.
const COMPRESSED_SLACK: usize = 1024;

/// The longest handshake answer a client waits for before giving up on
/// compression.
const MAX_ANSWER: usize = 16 * 1024;

/// Where a connection is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Stage {
    /// A client reading the server's answer, which says whether to
    /// compress.
    Handshake,
    /// Frames, compressed as agreed.
    Frames,
    /// The server did not agree: everything passes as it is.
    Plain,
}

/// The state of a compressing connection.
pub(super) struct Deflate {
    settings: Settings,
    agreed: Agreed,
    pub(super) stage: Stage,
    /// Bytes from the socket not yet taken apart.
    pub(super) raw_in: BytesMut,
    /// Bytes for the WebSocket library, frames inflated.
    pub(super) ready_in: BytesMut,
    /// Payload bytes of a frame passed through as it is, still to come.
    passing: u64,
    /// The message being read.
    reading: Reading,
    /// After a refusal, everything passes through untouched (the
    /// connection is closing and only drains what the client still sends).
    refused: bool,
    pub(super) eof: bool,
    /// Bytes from the WebSocket library not yet a whole frame.
    pub(super) raw_out: BytesMut,
    /// Bytes for the socket, frames deflated.
    pub(super) wire_out: BytesMut,
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
    pub(super) fn new(settings: Settings, agreed: Agreed) -> Self {
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
    pub(super) fn take_in(&mut self) -> Result<(), Refused> {
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
    pub(super) fn take_out(&mut self) -> io::Result<()> {
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
            // A server's frames are not masked: compressed as they lie.
            let payload = match header.mask {
                None => Cow::Borrowed(&frame[header_len..]),
                Some(mask) => {
                    let mut p = frame[header_len..].to_vec();
                    unmask(&mut p, mask);
                    Cow::Owned(p)
                }
            };
            let (level, bits) = (self.settings.level, self.agreed.server_window_bits);
            let wire_out = &mut self.wire_out;
            let shorter = deflated(&payload, level, bits, |packed| {
                if packed.len() >= payload.len() {
                    // Not worth it: a message may go out uncompressed.
                    return false;
                }
                header.rsv1 = true;
                write_header(&header, packed.len(), wire_out);
                let start = wire_out.len();
                wire_out.extend_from_slice(packed);
                if let Some(mask) = header.mask {
                    unmask(&mut wire_out[start..], mask);
                }
                true
            })?;
            drop(payload);
            if !shorter {
                self.wire_out.unsplit(frame);
            }
        }
    }
}

fn clamp(n: u64) -> usize {
    usize::try_from(n).unwrap_or(usize::MAX)
}

pub(super) fn write_header(header: &FrameHeader, len: usize, out: &mut BytesMut) {
    out.reserve(MAX_HEADER + len);
    header
        .format(len as u64, &mut out.writer())
        .expect("writing to memory does not fail");
}

/// Masking and unmasking are the same XOR.
pub(super) fn unmask(data: &mut [u8], mask: [u8; 4]) {
    for (i, b) in data.iter_mut().enumerate() {
        *b ^= mask[i & 3];
    }
}
