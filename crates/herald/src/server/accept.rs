//! The listener's loop: accepts connections and serves each with HTTP/1,
//! HTTP/2 and WebSocket upgrades. No phase may stall for free: a connection
//! must complete its first request's headers within `header_timeout` from
//! accept (protocol sniffing included — a socket that sends nothing, or
//! only the start of the HTTP/2 preface, is closed), HTTP/1 keep-alive
//! requests each get the same time for their headers, and after an upgrade
//! the session's own deadline for the connect command applies. When accept
//! fails (out of file descriptors, say) the loop backs off, longer each
//! time, and logs the streak rather than every failure.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::extract::Request;
use axum::Router;
use bytes::Bytes;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto::Builder;
use hyper_util::server::graceful::{GracefulShutdown, Watcher};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tower::ServiceExt;

use super::direct::{self, Sniffed, Streams};
use super::prefixed::Prefixed;
use super::tls::Tls;

/// First pause after a failed accept; it doubles up to [`ACCEPT_BACKOFF_MAX`].
const ACCEPT_BACKOFF: Duration = Duration::from_millis(10);
const ACCEPT_BACKOFF_MAX: Duration = Duration::from_secs(1);

/// How often a streak of failed accepts is logged.
const ACCEPT_LOG_EVERY: Duration = Duration::from_secs(10);

/// Longest wait for plain HTTP requests at shutdown.
const HTTP_DRAIN: Duration = Duration::from_secs(5);

/// Accepts connections until `stop`, then lets plain HTTP requests under
/// way finish (upgraded connections are sessions by then, and close
/// through the node's shutdown).
pub(super) async fn accept(
    listener: TcpListener,
    router: Router,
    tls: Option<Arc<Tls>>,
    stop: CancellationToken,
    header_timeout: Duration,
    streams: Streams,
) {
    let graceful = GracefulShutdown::new();
    let mut builder = Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(header_timeout);
    let builder = Arc::new(builder);
    let streams = Arc::new(streams);
    let mut failures = Failures::default();
    loop {
        let (stream, peer) = tokio::select! {
            _ = stop.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => {
                    failures.ended();
                    accepted
                }
                Err(e) => {
                    let pause = failures.failed(&e);
                    tokio::select! {
                        _ = stop.cancelled() => break,
                        _ = tokio::time::sleep(pause) => continue,
                    }
                }
            },
        };
        let _ = stream.set_nodelay(true);
        let connection = Connection {
            router: router.clone(),
            builder: builder.clone(),
            graceful: graceful.watcher(),
            peer,
            header_timeout,
            streams: streams.clone(),
            stop: stop.clone(),
        };
        match &tls {
            // The handshake is the connection's first phase: it too must end
            // within the header timeout, and runs in the connection's task
            // so that a slow one holds no one else up.
            Some(tls) => {
                let acceptor = tls.acceptor();
                tokio::spawn(async move {
                    let started = Instant::now();
                    let handshake = tokio::time::timeout(header_timeout, acceptor.accept(stream));
                    if let Ok(Ok(stream)) = handshake.await {
                        connection.serve(stream, started).await;
                    }
                });
            }
            None => {
                tokio::spawn(connection.serve(stream, Instant::now()));
            }
        }
    }
    let _ = tokio::time::timeout(HTTP_DRAIN, graceful.shutdown()).await;
}

/// One accepted connection, to be served.
struct Connection {
    router: Router,
    builder: Arc<Builder<TokioExecutor>>,
    graceful: Watcher,
    peer: SocketAddr,
    header_timeout: Duration,
    streams: Arc<Streams>,
    /// The server's shutdown: a connection between requests closes.
    stop: CancellationToken,
}

impl Connection {
    /// Serves HTTP on `stream` (plain or TLS); a connection whose first
    /// request head is not there by `started` + the header timeout is
    /// closed. Requests to the streaming transports are served beside the
    /// HTTP stack (`direct.rs`) for as long as the connection carries only
    /// those; the first other request hands it to the HTTP stack for good.
    /// Each way is boxed: the connection's task holds only the one it is
    /// on.
    async fn serve<S>(self, mut stream: S, started: Instant)
    where
        S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let mut deadline = started + self.header_timeout;
        let mut carried = Bytes::new();
        loop {
            let sniffed = direct::sniff(&mut stream, &self.streams, carried);
            let sniffed = tokio::select! {
                sniffed = tokio::time::timeout_at(deadline, sniffed) => sniffed,
                _ = self.stop.cancelled() => return,
            };
            let Ok(Ok(sniffed)) = sniffed else {
                return;
            };
            match sniffed {
                Sniffed::Direct(head) => {
                    let router = self.router.clone();
                    let served = direct::serve(stream, head, router, self.peer, &self.streams);
                    let Some(kept) = Box::pin(served).await else {
                        return;
                    };
                    // Kept alive: the next request gets its own time.
                    (stream, carried) = kept;
                    deadline = Instant::now() + self.header_timeout;
                }
                Sniffed::Other(read) => {
                    let stream = Prefixed::new(read, stream);
                    return Box::pin(self.http(stream, deadline)).await;
                }
            }
        }
    }

    /// Serves `stream` with the HTTP stack; a connection whose request has
    /// not begun by `deadline` is closed.
    async fn http<S>(self, stream: S, deadline: Instant)
    where
        S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let Self {
            router,
            builder,
            graceful,
            peer,
            ..
        } = self;
        // Set by the first request: until then the connection is on the
        // clock.
        let begun = Arc::new(AtomicBool::new(false));
        let seen = begun.clone();
        let service = hyper::service::service_fn(move |mut request: Request<Incoming>| {
            seen.store(true, Ordering::Release);
            // Handlers that limit by address read it from here.
            request
                .extensions_mut()
                .insert(axum::extract::ConnectInfo(peer));
            router.clone().oneshot(request)
        });
        let conn = builder
            .serve_connection_with_upgrades(TokioIo::new(stream), service)
            .into_owned();
        let mut conn = std::pin::pin!(graceful.watch(conn));
        tokio::select! {
            _ = conn.as_mut() => return,
            _ = tokio::time::sleep_until(deadline) => {}
        }
        if begun.load(Ordering::Acquire) {
            let _ = conn.await;
        }
        // Else dropping it closes a connection that sent no request.
    }
}

/// A streak of failed accepts: how long to pause, and when it was last
/// logged.
#[derive(Default)]
struct Failures {
    count: u64,
    pause: Duration,
    logged: Option<Instant>,
}

impl Failures {
    /// Records a failure; returns how long to pause before accepting again.
    fn failed(&mut self, e: &std::io::Error) -> Duration {
        self.count += 1;
        self.pause = (self.pause * 2).clamp(ACCEPT_BACKOFF, ACCEPT_BACKOFF_MAX);
        if self.logged.is_none_or(|t| t.elapsed() >= ACCEPT_LOG_EVERY) {
            self.logged = Some(Instant::now());
            tracing::warn!(
                error = %e,
                failures = self.count,
                pause = ?self.pause,
                "accept failed; backing off"
            );
        }
        self.pause
    }

    /// An accept succeeded: the streak is over.
    fn ended(&mut self) {
        if self.count > 0 {
            tracing::info!(failures = self.count, "accepting again");
            *self = Self::default();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pauses_grow_to_a_cap_and_a_streak_logs_once() {
        let mut f = Failures::default();
        let e = std::io::Error::other("too many open files");
        let pauses: Vec<Duration> = (0..10).map(|_| f.failed(&e)).collect();
        assert_eq!(pauses[0], ACCEPT_BACKOFF);
        assert_eq!(pauses[1], ACCEPT_BACKOFF * 2);
        assert!(pauses.windows(2).all(|w| w[0] <= w[1]));
        assert_eq!(*pauses.last().unwrap(), ACCEPT_BACKOFF_MAX);
        let logged = f.logged;
        f.failed(&e);
        assert_eq!(f.logged, logged, "logged once per streak interval");
        f.ended();
        assert_eq!(f.failed(&e), ACCEPT_BACKOFF, "a new streak starts small");
    }
}
