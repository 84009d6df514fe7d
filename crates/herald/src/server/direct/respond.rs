//! The response to a request served beside the HTTP stack: its head, then
//! its body as it comes — in chunks (HTTP/1.1) when its length is not
//! known — then the connection closes, unless it is kept alive for another
//! request. Body frames that are ready together go out in one write, and
//! nothing is kept between writes. The read side of a connection that
//! closes after the response is watched throughout: a client that closes
//! it (or whose connection fails) ends the response, and what it sends
//! meanwhile is dropped. A write that makes no progress for the stall time
//! ends it too.

use std::future::Future;
use std::io::Write;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime};

use axum::body::Body;
use axum::http::header::{CONNECTION, CONTENT_LENGTH, DATE, TRANSFER_ENCODING};
use axum::http::response::Parts;
use axum::http::{StatusCode, Version};
use axum::response::Response;
use hyper::body::Body as _;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::time::Sleep;

/// Body frames gathered into one write, up to about this much.
const BATCH: usize = 16 * 1024;

/// Reads of what a client sends while its response streams, per wake-up.
const DISCARDS: usize = 16;

/// What a client may send while its response streams (it has nothing to
/// say then); beyond this the connection is closed.
const DISCARD_MAX: usize = 64 * 1024;

/// After the response, how long (and for how much) what the client still
/// sends is read and dropped before the connection closes: closed with
/// unread bytes (the rest of a body refused as too large, say), the
/// connection would be reset, and the client might lose the response.
const LINGER: Duration = Duration::from_secs(1);
const LINGER_BYTES: usize = 1024 * 1024;

/// Writes `response` to `io` (the request was `version`). The connection
/// comes back when `keep_alive` and the response was written whole; else
/// it is closed.
pub(super) async fn respond<S>(
    mut io: S,
    response: Response,
    version: Version,
    stall: Duration,
    keep_alive: bool,
) -> Option<S>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let mut writer = Writer::new(response, version, stall, keep_alive);
    let whole = std::future::poll_fn(|cx| writer.poll(&mut io, cx)).await;
    // The body (a stream's session) goes now, not after the lingering.
    drop(writer);
    if keep_alive && whole {
        return Some(io);
    }
    // Boxed: only a connection that closes pays for its timer.
    let _ = Box::pin(tokio::time::timeout(LINGER, linger(&mut io))).await;
    None
}

/// Ends the connection's write side, then drops what the client sends
/// until it closes too.
async fn linger<S: AsyncRead + AsyncWrite + Unpin>(io: &mut S) -> std::io::Result<()> {
    io.shutdown().await?;
    // On the heap: only the lingering connection pays for it.
    let mut scratch = vec![0u8; 4096];
    let mut left = LINGER_BYTES;
    while left > 0 {
        match io.read(&mut scratch).await? {
            0 => break,
            n => left = left.saturating_sub(n),
        }
    }
    Ok(())
}

/// The status line and header fields, with this connection's own.
fn head(parts: &Parts, length: Option<u64>, chunked: bool, keep_alive: bool) -> Vec<u8> {
    let mut out = Vec::with_capacity(256);
    let status = parts.status;
    let reason = status.canonical_reason().unwrap_or("");
    let _ = write!(out, "HTTP/1.1 {} {reason}\r\n", status.as_str());
    for (name, value) in &parts.headers {
        if [CONNECTION, CONTENT_LENGTH, TRANSFER_ENCODING, DATE].contains(name) {
            continue;
        }
        out.extend_from_slice(name.as_str().as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    // No length where there can be no body (RFC 9110 §8.6).
    let bodiless = parts.status.is_informational()
        || parts.status == StatusCode::NO_CONTENT
        || parts.status == StatusCode::NOT_MODIFIED;
    match length {
        Some(_) if bodiless => {}
        Some(n) => {
            let _ = write!(out, "content-length: {n}\r\n");
        }
        None if chunked => out.extend_from_slice(b"transfer-encoding: chunked\r\n"),
        None => {}
    }
    let date = httpdate::fmt_http_date(SystemTime::now());
    let _ = write!(out, "date: {date}\r\n");
    if !keep_alive {
        out.extend_from_slice(b"connection: close\r\n");
    }
    out.extend_from_slice(b"\r\n");
    out
}

struct Writer {
    /// To write; `written` of it is.
    out: Vec<u8>,
    written: usize,
    /// Written, not yet flushed (TLS keeps records back until then).
    flushing: bool,
    /// The body has ended; once `out` is written, so has the response.
    ended: bool,
    chunked: bool,
    /// Of a body of known length: what is still to come. A body that
    /// yields more, or less, fails the response.
    left: Option<u64>,
    /// Watch the read side for the client leaving (only when the
    /// connection closes after the response: else what the client sends is
    /// its next request).
    watch: bool,
    body: Body,
    stall: Duration,
    /// Since when the current write has waited.
    stalled: Option<Pin<Box<Sleep>>>,
    /// Bytes the client sent while the response streamed.
    discarded: usize,
}

impl Writer {
    /// Starts with the head; nothing else of the response's head is kept.
    fn new(response: Response, version: Version, stall: Duration, keep_alive: bool) -> Self {
        let (parts, body) = response.into_parts();
        let length = body.size_hint().exact();
        let chunked = length.is_none() && version == Version::HTTP_11;
        Writer {
            out: head(&parts, length, chunked, keep_alive),
            written: 0,
            flushing: false,
            ended: false,
            chunked,
            left: length,
            watch: !keep_alive,
            body,
            stall,
            stalled: None,
            discarded: 0,
        }
    }

    /// Ready when the response is over: `true` written whole, `false`
    /// given up.
    fn poll<S>(&mut self, io: &mut S, cx: &mut Context<'_>) -> Poll<bool>
    where
        S: AsyncRead + AsyncWrite + Unpin,
    {
        if self.watch && gone(io, cx, &mut self.discarded) {
            return Poll::Ready(false);
        }
        loop {
            while self.written < self.out.len() {
                match Pin::new(&mut *io).poll_write(cx, &self.out[self.written..]) {
                    Poll::Ready(Ok(0)) | Poll::Ready(Err(_)) => return Poll::Ready(false),
                    Poll::Ready(Ok(n)) => {
                        self.written += n;
                        self.stalled = None;
                    }
                    Poll::Pending => return self.wait(cx),
                }
            }
            if !self.out.is_empty() {
                self.out = Vec::new();
                self.written = 0;
                self.flushing = true;
            }
            if self.flushing {
                match Pin::new(&mut *io).poll_flush(cx) {
                    Poll::Ready(Ok(())) => {
                        self.flushing = false;
                        self.stalled = None;
                    }
                    Poll::Ready(Err(_)) => return Poll::Ready(false),
                    Poll::Pending => return self.wait(cx),
                }
            }
            if self.ended {
                return Poll::Ready(self.left.is_none_or(|left| left == 0));
            }
            if self.gather(cx).is_err() {
                return Poll::Ready(false);
            }
            if self.out.is_empty() && !self.ended {
                return Poll::Pending;
            }
        }
    }

    /// A write waits: given up once it has waited too long.
    fn wait(&mut self, cx: &mut Context<'_>) -> Poll<bool> {
        let stall = self.stall;
        let stalled = self
            .stalled
            .get_or_insert_with(|| Box::pin(tokio::time::sleep(stall)));
        stalled.as_mut().poll(cx).map(|()| false)
    }

    /// Takes what the body has ready into `out`. `Err`: the body failed,
    /// and the response cannot be completed.
    fn gather(&mut self, cx: &mut Context<'_>) -> Result<(), ()> {
        while self.out.len() < BATCH {
            match Pin::new(&mut self.body).poll_frame(cx) {
                Poll::Ready(Some(Ok(frame))) => {
                    if let Ok(data) = frame.into_data() {
                        self.data(&data)?;
                    }
                }
                Poll::Ready(Some(Err(_))) => return Err(()),
                Poll::Ready(None) => {
                    if self.chunked {
                        self.out.extend_from_slice(b"0\r\n\r\n");
                    }
                    self.ended = true;
                    break;
                }
                Poll::Pending => break,
            }
        }
        Ok(())
    }

    fn data(&mut self, data: &[u8]) -> Result<(), ()> {
        // An empty chunk would end the body.
        if data.is_empty() {
            return Ok(());
        }
        if let Some(left) = &mut self.left {
            *left = left.checked_sub(data.len() as u64).ok_or(())?;
        }
        if self.chunked {
            self.out.reserve(data.len() + 12);
            let _ = write!(self.out, "{:x}\r\n", data.len());
            self.out.extend_from_slice(data);
            self.out.extend_from_slice(b"\r\n");
        } else {
            self.out.extend_from_slice(data);
        }
        Ok(())
    }
}

/// Whether the client has closed its side (or the connection failed, or
/// it sent more than [`DISCARD_MAX`]); drops what it sent meanwhile,
/// counted in `discarded`.
fn gone<S: AsyncRead + Unpin>(io: &mut S, cx: &mut Context<'_>, discarded: &mut usize) -> bool {
    let mut scratch = [0u8; 256];
    for _ in 0..DISCARDS {
        let mut buf = ReadBuf::new(&mut scratch);
        match Pin::new(&mut *io).poll_read(cx, &mut buf) {
            Poll::Ready(Ok(())) if buf.filled().is_empty() => return true,
            Poll::Ready(Ok(())) => {
                *discarded += buf.filled().len();
                if *discarded > DISCARD_MAX {
                    return true;
                }
            }
            Poll::Ready(Err(_)) => return true,
            Poll::Pending => return false,
        }
    }
    // More to drop: later, after the others have had their turn.
    cx.waker().wake_by_ref();
    false
}

#[cfg(test)]
mod tests {
    use std::convert::Infallible;

    use axum::body::Bytes;
    use axum::response::IntoResponse;
    use futures_util::StreamExt;
    use tokio::io::DuplexStream;
    use tokio::sync::mpsc;

    use super::*;

    /// A streamed response fed by `rx`.
    fn streamed(rx: mpsc::Receiver<&'static str>) -> Response {
        let chunks = tokio_stream_of(rx).map(|s| Ok::<_, Infallible>(Bytes::from(s)));
        (
            [("content-type", "text/event-stream")],
            Body::from_stream(chunks),
        )
            .into_response()
    }

    fn tokio_stream_of<T: Send + 'static>(
        mut rx: mpsc::Receiver<T>,
    ) -> impl futures_util::Stream<Item = T> + Send {
        futures_util::stream::poll_fn(move |cx| rx.poll_recv(cx))
    }

    /// A streamed response over a duplex of `room` bytes, written by a
    /// task: the client's end, the task, and what feeds the body.
    fn streaming(
        room: usize,
        stall: Duration,
    ) -> (DuplexStream, Writing, mpsc::Sender<&'static str>) {
        let (client, server) = tokio::io::duplex(room);
        let (tx, rx) = mpsc::channel(64);
        let writing = tokio::spawn(respond(
            server,
            streamed(rx),
            Version::HTTP_11,
            stall,
            false,
        ));
        (client, writing, tx)
    }

    type Writing = tokio::task::JoinHandle<Option<DuplexStream>>;

    async fn read_all(mut client: tokio::io::DuplexStream) -> String {
        let mut read = Vec::new();
        client.read_to_end(&mut read).await.unwrap();
        String::from_utf8(read).unwrap()
    }

    #[tokio::test]
    async fn a_stream_goes_out_in_chunks_and_ends_with_the_body() {
        let (client, writing, tx) = streaming(4096, Duration::from_secs(5));
        tx.send("data: {}\n\n").await.unwrap();
        tx.send("").await.unwrap();
        tx.send("data: {\"a\":1}\n\n").await.unwrap();
        drop(tx);
        writing.await.unwrap();
        let answer = read_all(client).await;
        let (head, body) = answer.split_once("\r\n\r\n").unwrap();
        assert!(head.starts_with("HTTP/1.1 200 OK\r\n"), "{head}");
        for field in [
            "content-type: text/event-stream",
            "transfer-encoding: chunked",
            "connection: close",
            "date: ",
        ] {
            assert!(head.contains(field), "{field} in {head}");
        }
        // The empty frame is no chunk (it would end the body).
        assert_eq!(
            body,
            "a\r\ndata: {}\n\n\r\nf\r\ndata: {\"a\":1}\n\n\r\n0\r\n\r\n"
        );
    }

    #[tokio::test]
    async fn a_sized_answer_has_its_length_and_http_1_0_gets_no_chunks() {
        let (client, server) = tokio::io::duplex(4096);
        let refused = (StatusCode::BAD_REQUEST, "no connect").into_response();
        respond(
            server,
            refused,
            Version::HTTP_11,
            Duration::from_secs(5),
            false,
        )
        .await;
        let answer = read_all(client).await;
        assert!(
            answer.starts_with("HTTP/1.1 400 Bad Request\r\n"),
            "{answer}"
        );
        assert!(answer.contains("content-length: 10\r\n"), "{answer}");
        assert!(answer.ends_with("\r\n\r\nno connect"), "{answer}");

        let (client, server) = tokio::io::duplex(4096);
        let (tx, rx) = mpsc::channel(4);
        tx.send("one\n").await.unwrap();
        drop(tx);
        respond(
            server,
            streamed(rx),
            Version::HTTP_10,
            Duration::from_secs(5),
            false,
        )
        .await;
        let answer = read_all(client).await;
        assert!(!answer.contains("transfer-encoding"), "{answer}");
        assert!(answer.ends_with("\r\n\r\none\n"), "{answer}");
    }

    #[tokio::test]
    async fn a_client_that_closes_ends_an_idle_stream() {
        let (mut client, writing, _tx) = streaming(4096, Duration::from_secs(5));
        // The head is out: the stream is idle, nothing more to write.
        let mut head = [0u8; 12];
        client.read_exact(&mut head).await.unwrap();
        drop(client);
        tokio::time::timeout(Duration::from_secs(5), writing)
            .await
            .expect("ended without a write")
            .unwrap();
    }

    #[tokio::test]
    async fn a_client_that_talks_through_a_stream_is_cut_off() {
        let (mut client, writing, _tx) = streaming(1 << 20, Duration::from_secs(5));
        client
            .write_all(&vec![b'x'; DISCARD_MAX + 1])
            .await
            .unwrap();
        tokio::time::timeout(Duration::from_secs(5), writing)
            .await
            .expect("ended")
            .unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn a_write_that_stalls_ends_the_response() {
        // Room for the head and a little: the client never reads.
        let stall = Duration::from_secs(3);
        let started = tokio::time::Instant::now();
        let (_client, writing, tx) = streaming(512, stall);
        for _ in 0..64 {
            tx.send("data: xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx\n\n")
                .await
                .unwrap();
        }
        tokio::time::timeout(stall * 10, writing)
            .await
            .expect("given up on")
            .unwrap();
        assert!(started.elapsed() >= stall, "{:?}", started.elapsed());
    }
}
