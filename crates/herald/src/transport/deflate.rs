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

//!
//! `offer.rs` agrees on it in the handshake, `frames.rs` takes the frames
//! apart and puts them back together, `zlib.rs` compresses and inflates.

mod frames;
mod offer;
mod zlib;

use std::io;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use bytes::{Buf, BufMut, BytesMut};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use frames::{Deflate, Stage};
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

/// Bytes read from the socket at once while compressing.
const READ_CHUNK: usize = 4096;

/// Deflated bytes waiting for the socket beyond which a write waits
/// (so a client that does not read holds back the writer as without
/// compression).
const HIGH_WATER: usize = 64 * 1024;

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
