//! Wiring: builds the node and the HTTP router from a configuration, binds,
//! serves, and shuts down in order — stop accepting, tell every connection to
//! reconnect elsewhere (3001), wait for them with a grace timeout.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::{DefaultBodyLimit, State};
use axum::http::header;
use axum::response::IntoResponse;
use axum::routing::{get, post};
use axum::Router;
use std::time::Duration;

use axum::extract::Request;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto::Builder;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tower::ServiceExt;

use crate::config::Config;
use crate::node::{Node, NodeError};
use crate::{api, transport};

/// A bound, not yet running server.
pub struct Server {
    node: Arc<Node>,
    listener: TcpListener,
}

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error(transparent)]
    Node(#[from] NodeError),
    #[error("cannot listen on {addr}")]
    Bind {
        addr: String,
        source: std::io::Error,
    },
    #[error("server failed")]
    Io(#[from] std::io::Error),
}

impl Server {
    /// Builds the node and binds the listener (port 0 picks a free port).
    pub async fn bind(config: Config) -> Result<Self, ServeError> {
        let host = if config.http_server.address.is_empty() {
            "0.0.0.0"
        } else {
            config.http_server.address.as_str()
        };
        let addr = format!("{host}:{}", config.http_server.port);
        let listener = TcpListener::bind(&addr)
            .await
            .map_err(|source| ServeError::Bind { addr, source })?;
        let node = Node::open(config).await?;
        Ok(Self { node, listener })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.listener
            .local_addr()
            .expect("bound listener has an address")
    }

    pub fn node(&self) -> &Arc<Node> {
        &self.node
    }

    /// Cancel this token to shut the server down gracefully.
    pub fn shutdown_token(&self) -> CancellationToken {
        self.node.shutdown().clone()
    }

    /// Serves until the shutdown token is cancelled, then drains.
    pub async fn run(self) -> Result<(), ServeError> {
        let node = self.node;
        let addr = self.listener.local_addr()?;
        tracing::info!(%addr, node = %node.cluster().name(), version = Node::version(), "listening");
        if node.config.dev {
            tracing::info!(
                "demo chat: open http://localhost:{}/ in two browser tabs",
                addr.port()
            );
        }
        let router = router(node.clone());
        let stop = node.shutdown().clone();
        let header_timeout = node.config.http_server.header_read_timeout.0;
        accept(self.listener, router, stop, header_timeout).await;
        tracing::info!(
            connections = node.hub.num_clients(),
            "shutting down: closing connections"
        );
        node.tracker().close();
        let grace = node.config.shutdown.timeout.0;
        if tokio::time::timeout(grace, node.tracker().wait())
            .await
            .is_err()
        {
            tracing::warn!(
                remaining = node.tracker().len(),
                "shutdown grace period ended with connections open"
            );
        }
        node.close().await;
        tracing::info!("stopped");
        Ok(())
    }
}

/// Accepts connections until `stop`, serving each with HTTP/1 and HTTP/2
/// and WebSocket upgrades. A client must send its request headers within
/// `header_timeout`, so half-open handshakes cannot pile up.
async fn accept(
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
    loop {
        let stream = tokio::select! {
            _ = stop.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(e) => {
                    // Out of file descriptors and the like: wait, then go on.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(ACCEPT_BACKOFF).await;
                    continue;
                }
            },
        };
        let _ = stream.set_nodelay(true);
        let router = router.clone();
        let service = hyper::service::service_fn(move |request: Request<Incoming>| {
            router.clone().oneshot(request)
        });
        let conn = builder
            .serve_connection_with_upgrades(TokioIo::new(stream), service)
            .into_owned();
        let conn = graceful.watch(conn);
        tokio::spawn(async move {
            let _ = conn.await;
        });
    }
    // Plain HTTP requests under way may finish; upgraded connections are
    // sessions now and close through the node's shutdown.
    let _ = tokio::time::timeout(HTTP_DRAIN, graceful.shutdown()).await;
}

/// Pause after a failed accept.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(50);

/// Longest wait for plain HTTP requests at shutdown.
const HTTP_DRAIN: Duration = Duration::from_secs(5);

fn router(node: Arc<Node>) -> Router {
    let c = &node.config;
    let mut r = Router::new();
    if !c.websocket.disabled {
        r = r.route(
            &c.websocket.handler_prefix,
            get(transport::websocket::upgrade),
        );
    }
    if !c.http_api.disabled {
        let path = format!(
            "{}/{{method}}",
            c.http_api.handler_prefix.trim_end_matches('/')
        );
        r = r.route(
            &path,
            post(api::handle).layer(DefaultBodyLimit::max(c.http_api.max_request_body_size)),
        );
    }
    if c.health.enabled {
        r = r.route(
            &c.health.handler_prefix,
            get(|| async { axum::Json(serde_json::json!({})) }),
        );
    }
    r = r.route("/metrics", get(metrics));
    if c.dev {
        r = r.merge(crate::demo::routes());
    }
    r.with_state(node)
}

async fn metrics(State(node): State<Arc<Node>>) -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        crate::metrics::render(
            &node.counters,
            &node.hub,
            node.retention_removed(),
            node.cluster().reconnects(),
        ),
    )
}
