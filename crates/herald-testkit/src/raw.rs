//! A WebSocket client that writes frames byte by byte, for what a
//! well-behaved client library refuses to send (invalid UTF-8, reserved
//! opcodes, oversized frames) and to see how the server ends the TCP
//! connection (a clean close or a reset).

use std::io::ErrorKind;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::TcpStream;

use crate::WAIT;

/// What the server sent on a raw connection.
#[derive(Debug, PartialEq, Eq)]
pub enum RawEvent {
    /// A frame: its opcode (with [`opcode::RSV1`] when compressed) and
    /// payload.
    Frame(u8, Vec<u8>),
    /// The server closed TCP cleanly.
    Eof,
    /// The connection was reset (the server closed with unread data).
    Reset,
}

/// Frame opcodes.
pub mod opcode {
    pub const TEXT: u8 = 1;
    pub const BINARY: u8 = 2;
    pub const CLOSE: u8 = 8;
    /// Set beside the opcode on a compressed (permessage-deflate) frame.
    pub const RSV1: u8 = 0x40;
}

pub struct RawWs {
    read: OwnedReadHalf,
    write: OwnedWriteHalf,
    buffered: Vec<u8>,
}

impl RawWs {
    /// Connects to `addr` and upgrades `/connection/websocket`.
    pub async fn open(addr: &str) -> Self {
        Self::open_with(addr, "").await.0
    }

    /// Connects to `addr` and upgrades `/connection/websocket` with
    /// `headers` (whole `Name: value\r\n` lines) added to the request;
    /// returns the response head too.
    pub async fn open_with(addr: &str, headers: &str) -> (Self, String) {
        let stream = TcpStream::connect(addr).await.expect("TCP connect");
        let (mut read, mut write) = stream.into_split();
        let request = format!(
            "GET /connection/websocket HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\n\
             Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
             Sec-WebSocket-Version: 13\r\n{headers}\r\n"
        );
        write.write_all(request.as_bytes()).await.expect("request");
        let mut buffered = Vec::new();
        let head_end = loop {
            if let Some(end) = buffered.windows(4).position(|w| w == b"\r\n\r\n") {
                break end + 4;
            }
            let mut chunk = [0u8; 1024];
            let n = tokio::time::timeout(WAIT, read.read(&mut chunk))
                .await
                .expect("upgrade in time")
                .expect("upgrade read");
            assert!(n > 0, "closed during the upgrade");
            buffered.extend_from_slice(&chunk[..n]);
        };
        let head = String::from_utf8_lossy(&buffered[..head_end]).to_string();
        assert!(head.starts_with("HTTP/1.1 101"), "{head}");
        buffered.drain(..head_end);
        let raw = Self {
            read,
            write,
            buffered,
        };
        (raw, head)
    }

    /// Sends one masked frame.
    pub async fn send_frame(&mut self, fin: bool, opcode: u8, payload: &[u8]) {
        self.send_bytes(&frame(fin, opcode, payload)).await;
    }

    /// Writes `bytes` as they are, for at most [`WAIT`]; returns whether
    /// all were written (a write the server refused, because it closed,
    /// is not a failure of the test: what it sent says why).
    pub async fn send_bytes(&mut self, bytes: &[u8]) -> bool {
        let written = tokio::time::timeout(WAIT, self.write.write_all(bytes)).await;
        matches!(written, Ok(Ok(())))
    }

    /// Sends a Close frame with `code`.
    pub async fn send_close(&mut self, code: u16) {
        self.send_frame(true, opcode::CLOSE, &code.to_be_bytes())
            .await;
    }

    /// The next frame, or how the connection ended.
    pub async fn next(&mut self) -> RawEvent {
        loop {
            if let Some((frame, used)) = parse(&self.buffered) {
                self.buffered.drain(..used);
                return frame;
            }
            let mut chunk = vec![0u8; 64 * 1024];
            let read = tokio::time::timeout(WAIT, self.read.read(&mut chunk))
                .await
                .expect("frame in time");
            match read {
                Ok(0) => return RawEvent::Eof,
                Ok(n) => self.buffered.extend_from_slice(&chunk[..n]),
                Err(e) if e.kind() == ErrorKind::ConnectionReset => return RawEvent::Reset,
                Err(e) => panic!("read failed: {e}"),
            }
        }
    }

    /// Skips data frames up to the server's Close frame; returns its code
    /// and reason, and how the connection ended after it.
    pub async fn close_and_end(&mut self) -> ((u16, String), RawEvent) {
        loop {
            match self.next().await {
                RawEvent::Frame(opcode::CLOSE, payload) => {
                    assert!(payload.len() >= 2, "a close frame without a code");
                    let code = u16::from_be_bytes([payload[0], payload[1]]);
                    let reason = String::from_utf8_lossy(&payload[2..]).to_string();
                    let end = self.next().await;
                    return ((code, reason), end);
                }
                RawEvent::Frame(..) => {}
                end => panic!("no close frame before {end:?}"),
            }
        }
    }
}

/// A client frame: masked (with a fixed key; masking is for proxies, not
/// secrecy).
pub fn frame(fin: bool, opcode: u8, payload: &[u8]) -> Vec<u8> {
    const KEY: [u8; 4] = [0x37, 0xfa, 0x21, 0x3d];
    let mut out = Vec::with_capacity(payload.len() + 14);
    out.push(if fin { 0x80 } else { 0 } | opcode);
    match payload.len() {
        n if n < 126 => out.push(0x80 | n as u8),
        n if n <= 0xffff => {
            out.push(0x80 | 126);
            out.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            out.push(0x80 | 127);
            out.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    out.extend_from_slice(&KEY);
    out.extend(payload.iter().enumerate().map(|(i, b)| b ^ KEY[i % 4]));
    out
}

/// A whole server frame at the front of `buf` (servers do not mask), and
/// the bytes it takes.
fn parse(buf: &[u8]) -> Option<(RawEvent, usize)> {
    let (&first, &second) = (buf.first()?, buf.get(1)?);
    let (len, head) = match second & 0x7f {
        126 => (u16::from_be_bytes([*buf.get(2)?, *buf.get(3)?]) as usize, 4),
        127 => {
            let bytes: [u8; 8] = buf.get(2..10)?.try_into().ok()?;
            (u64::from_be_bytes(bytes) as usize, 10)
        }
        n => (n as usize, 2),
    };
    let payload = buf.get(head..head + len)?.to_vec();
    Some((RawEvent::Frame(first & 0x4f, payload), head + len))
}
