//! HTTP/1 requests to the streaming transports (HTTP-streaming and SSE,
//! bidirectional and unidirectional) and to their emulation endpoint,
//! served beside the HTTP stack rather than by it. A stream's response
//! lasts as long as its connection, and a connection the HTTP stack serves
//! keeps its read and write buffers and its own state all that time:
//! several times what a WebSocket connection costs once it has left the
//! stack at the upgrade.
//!
//! So the accept loop reads each connection's first request head itself.
//! When it asks for one of these paths — HTTP/1.x, a body of known length —
//! the request goes through the same router (CORS, limits and handlers as
//! for any other), its body read from the connection as the handler asks
//! for it, and the response is written here ([`respond`]), holding nothing
//! between writes. A stream's connection closes when the stream ends; after
//! any other answer (a preflight, an emulation request, a refusal) a
//! kept-alive connection's next request head is read here again, as SDKs
//! send their stream and emulation requests over the same pooled
//! connections. Every other request (other paths, HTTP/2, a chunked body,
//! `Expect`, `Upgrade`, HEAD, a head that is not valid) goes to the HTTP
//! stack with the bytes already read put back in front, and the connection
//! stays there.

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::Body;
use axum::extract::{ConnectInfo, Request};
use axum::http::header::{CONNECTION, CONTENT_LENGTH, EXPECT, TRANSFER_ENCODING, UPGRADE};
use axum::http::{HeaderName, HeaderValue, Method, Uri, Version};
use axum::Router;
use bytes::Bytes;
use futures_util::Stream;
use hyper::body::Body as _;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, ReadBuf};
use tokio::sync::oneshot;
use tower::ServiceExt;

use crate::config::Config;

mod respond;

/// At most this much is read looking for a request head; a longer one is
/// left to the HTTP stack (which has its own limit).
const HEAD_MAX: usize = 16 * 1024;

/// At most this many header fields in a request served here.
const HEADERS_MAX: usize = 64;

/// Read at a time from a request body.
const BODY_READ: usize = 4096;

/// Longest wait, after the response is ready, for the request body (and
/// the connection with it) to come back.
const RETURN_WAIT: Duration = Duration::from_secs(1);

/// Which requests are served here, and how long a write may stall.
#[derive(Debug, Clone, Default)]
pub(super) struct Streams {
    /// The enabled streaming transports' paths, and the emulation
    /// endpoint's.
    paths: Vec<String>,
    /// A response write that makes no progress for this long closes the
    /// connection (`websocket.write_timeout`, as for WebSocket).
    stall: Duration,
}

impl Streams {
    /// The streaming transports `config` enables.
    pub(super) fn of(config: &Config) -> Self {
        Self {
            paths: config
                .stream_paths()
                .into_iter()
                .flatten()
                .map(str::to_string)
                .collect(),
            stall: config.websocket.write_timeout.0,
        }
    }

    fn none(&self) -> bool {
        self.paths.is_empty()
    }
}

/// A request head to serve here.
#[derive(Debug)]
pub(super) struct Head {
    request: axum::http::request::Parts,
    /// The body's length.
    length: u64,
    /// The client lets the connection stay open after the response.
    keep_alive: bool,
    /// What was read past the head: the body's start, maybe more.
    rest: Bytes,
}

/// What a look at a connection's next request found.
pub(super) enum Sniffed {
    /// A request to serve here.
    Direct(Box<Head>),
    /// Anything else, with the bytes read: for the HTTP stack.
    Other(Bytes),
}

/// Reads a request head from the connection, after what was `carried`
/// over from the previous request; stops at the first sign that the
/// request is not for a streaming transport.
pub(super) async fn sniff<S>(io: &mut S, streams: &Streams, carried: Bytes) -> io::Result<Sniffed>
where
    S: AsyncRead + Unpin,
{
    if streams.none() {
        return Ok(Sniffed::Other(carried));
    }
    let mut read = Vec::with_capacity(carried.len().max(1024));
    read.extend_from_slice(&carried);
    loop {
        match parse(&read, streams) {
            Parsed::Partial => {}
            Parsed::Other => return Ok(Sniffed::Other(read.into())),
            Parsed::Direct(mut head, end) => {
                head.rest = Bytes::from(read).slice(end..);
                return Ok(Sniffed::Direct(head));
            }
        }
        if read.len() == read.capacity() {
            if read.len() >= HEAD_MAX {
                return Ok(Sniffed::Other(read.into()));
            }
            read.reserve(read.len());
        }
        if io.read_buf(&mut read).await? == 0 {
            return Ok(Sniffed::Other(read.into()));
        }
    }
}

#[derive(Debug)]
enum Parsed {
    Partial,
    Other,
    /// The request (its `rest` still empty) and where its body starts.
    Direct(Box<Head>, usize),
}

fn parse(read: &[u8], streams: &Streams) -> Parsed {
    if read.is_empty() {
        return Parsed::Partial;
    }
    let mut fields = [httparse::EMPTY_HEADER; HEADERS_MAX];
    let mut head = httparse::Request::new(&mut fields);
    let end = match head.parse(read) {
        Ok(httparse::Status::Complete(end)) => end,
        Ok(httparse::Status::Partial) => return Parsed::Partial,
        Err(_) => return Parsed::Other,
    };
    let method = match head.method.map(|m| Method::from_bytes(m.as_bytes())) {
        Some(Ok(m)) if m != Method::HEAD && m != Method::CONNECT => m,
        _ => return Parsed::Other,
    };
    let version = match head.version {
        Some(1) => Version::HTTP_11,
        Some(0) => Version::HTTP_10,
        _ => return Parsed::Other,
    };
    let Some(Ok(uri)) = head.path.map(Uri::try_from) else {
        return Parsed::Other;
    };
    if uri.scheme().is_some() || !streams.paths.iter().any(|p| p == uri.path()) {
        return Parsed::Other;
    }
    let (mut parts, ()) = Request::new(()).into_parts();
    parts.method = method;
    parts.uri = uri;
    parts.version = version;
    for field in head.headers.iter() {
        let (Ok(name), Ok(value)) = (
            HeaderName::from_bytes(field.name.as_bytes()),
            HeaderValue::from_bytes(field.value),
        ) else {
            return Parsed::Other;
        };
        parts.headers.append(name, value);
    }
    let h = &parts.headers;
    if [TRANSFER_ENCODING, EXPECT, UPGRADE]
        .iter()
        .any(|name| h.contains_key(name))
    {
        return Parsed::Other;
    }
    let mut lengths = h.get_all(CONTENT_LENGTH).iter().map(|v| {
        std::str::from_utf8(v.as_bytes())
            .ok()
            .filter(|s| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()))
            .and_then(|s| s.parse::<u64>().ok())
    });
    let length = match (lengths.next(), lengths.next()) {
        (None, _) => 0,
        (Some(Some(n)), None) => n,
        _ => return Parsed::Other,
    };
    let close = h
        .get_all(CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|token| token.trim().eq_ignore_ascii_case("close"));
    let head = Head {
        keep_alive: version == Version::HTTP_11 && !close,
        request: parts,
        length,
        rest: Bytes::new(),
    };
    Parsed::Direct(Box::new(head), end)
}

/// Serves `head`'s request on `io` through `router` and writes the
/// response. The connection comes back, with what was read past the
/// request, when it may carry another request; else it is closed.
pub(super) async fn serve<S>(
    io: S,
    head: Box<Head>,
    router: Router,
    peer: SocketAddr,
    streams: &Streams,
) -> Option<(S, Bytes)>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (back, returned) = oneshot::channel();
    let body = Incoming {
        io: Some(io),
        rest: head.rest,
        remaining: head.length,
        back: Some(back),
    };
    let mut request = Request::from_parts(head.request, Body::from_stream(body));
    request.extensions_mut().insert(ConnectInfo(peer));
    let version = request.version();
    // Boxed: the connection's future need not keep room for the router's
    // all the time the response streams.
    let Ok(response) = Box::pin(router.oneshot(request)).await;
    // The handler is done with the body by now, and with it the
    // connection; one that kept the body would keep the connection, so
    // the wait is bounded.
    let Ok(Ok(Returned { io, rest, whole })) = tokio::time::timeout(RETURN_WAIT, returned).await
    else {
        tracing::debug!("a request body outlived its handler: connection closed");
        return None;
    };
    // Another request can follow only a body read whole and an answer of
    // known length.
    let keep_alive = head.keep_alive && whole && response.body().size_hint().exact().is_some();
    let io = respond::respond(io, response, version, streams.stall, keep_alive).await?;
    Some((io, rest))
}

/// A request body read from the connection as the handler asks for it.
/// Dropped (read whole, or given up on), it hands the connection back.
struct Incoming<S> {
    io: Option<S>,
    /// Read past the head and not yet taken.
    rest: Bytes,
    /// Still to come.
    remaining: u64,
    back: Option<oneshot::Sender<Returned<S>>>,
}

/// The connection, back from a request body.
struct Returned<S> {
    io: S,
    /// Read past the body: the start of the next request.
    rest: Bytes,
    /// The body was read to its end.
    whole: bool,
}

impl<S: AsyncRead + Unpin> Stream for Incoming<S> {
    type Item = io::Result<Bytes>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = &mut *self;
        if this.remaining == 0 {
            return Poll::Ready(None);
        }
        let want = usize::try_from(this.remaining).unwrap_or(usize::MAX);
        if !this.rest.is_empty() {
            let n = want.min(this.rest.len());
            let chunk = this.rest.split_to(n);
            this.remaining -= n as u64;
            return Poll::Ready(Some(Ok(chunk)));
        }
        let Some(io) = this.io.as_mut() else {
            return Poll::Ready(None);
        };
        let mut space = [0u8; BODY_READ];
        let n = want.min(BODY_READ);
        let mut buf = ReadBuf::new(&mut space[..n]);
        match Pin::new(io).poll_read(cx, &mut buf) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(Err(e)) => Poll::Ready(Some(Err(e))),
            Poll::Ready(Ok(())) if buf.filled().is_empty() => {
                let eof = io::Error::from(io::ErrorKind::UnexpectedEof);
                Poll::Ready(Some(Err(eof)))
            }
            Poll::Ready(Ok(())) => {
                let chunk = Bytes::copy_from_slice(buf.filled());
                this.remaining -= chunk.len() as u64;
                Poll::Ready(Some(Ok(chunk)))
            }
        }
    }
}

impl<S> Drop for Incoming<S> {
    fn drop(&mut self) {
        if let (Some(io), Some(back)) = (self.io.take(), self.back.take()) {
            let _ = back.send(Returned {
                io,
                rest: std::mem::take(&mut self.rest),
                whole: self.remaining == 0,
            });
        }
    }
}

#[cfg(test)]
mod tests;
