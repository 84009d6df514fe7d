//! The listener's loop: accepts connections and serves each with HTTP/1,
//! HTTP/2 and WebSocket upgrades. No phase may stall for free: a connection
//! must complete its first request's headers within `header_timeout` from
//! accept (protocol sniffing included — a socket that sends nothing, or
//! only the start of the HTTP/2 preface, is closed), HTTP/1 keep-alive
//! requests each get the same time for their headers, and after an upgrade
//! the session's own deadline for the connect command applies. When accept
//! fails (out of file descriptors, say) the loop backs off, longer each
//! time, and logs the streak rather than every failure.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::extract::Request;
use axum::Router;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto::Builder;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tower::ServiceExt;

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
    stop: CancellationToken,
    header_timeout: Duration,
) {
    let graceful = GracefulShutdown::new();
    let mut builder = Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(header_timeout);
    let mut failures = Failures::default();
    loop {
        let stream = tokio::select! {
            _ = stop.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => {
                    failures.ended();
                    (stream, peer)
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
        let (stream, peer) = stream;
        let _ = stream.set_nodelay(true);
        let router = router.clone();
        // Set by the first request: until then the connection is on the
        // clock.
        let started = Arc::new(AtomicBool::new(false));
        let seen = started.clone();
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
        let conn = graceful.watch(conn);
        tokio::spawn(async move {
            let mut conn = std::pin::pin!(conn);
            tokio::select! {
                _ = conn.as_mut() => return,
                _ = tokio::time::sleep(header_timeout) => {}
            }
            if started.load(Ordering::Acquire) {
                let _ = conn.await;
            }
            // Else dropping it closes a connection that sent no request.
        });
    }
    let _ = tokio::time::timeout(HTTP_DRAIN, graceful.shutdown()).await;
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
