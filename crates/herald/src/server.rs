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
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

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
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: String,
        source: std::io::Error,
    },
    #[error("server failed: {0}")]
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
        self.node.shutdown.clone()
    }

    /// Serves until the shutdown token is cancelled, then drains.
    pub async fn run(self) -> Result<(), ServeError> {
        let node = self.node;
        let addr = self.listener.local_addr()?;
        tracing::info!(%addr, node = %node.name, version = Node::version(), "listening");
        if node.config.dev {
            tracing::info!(
                "demo chat: open http://localhost:{}/ in two browser tabs",
                addr.port()
            );
        }
        let router = router(node.clone());
        let sweeper = tokio::spawn(sweep_streams(node.clone()));
        let stop = node.shutdown.clone();
        axum::serve(self.listener, router)
            .with_graceful_shutdown(stop.cancelled_owned())
            .await?;
        tracing::info!(
            connections = node.hub.num_clients(),
            "shutting down: closing connections"
        );
        node.tracker.close();
        let grace = node.config.shutdown.timeout.0;
        if tokio::time::timeout(grace, node.tracker.wait())
            .await
            .is_err()
        {
            tracing::warn!(
                remaining = node.tracker.len(),
                "shutdown grace period ended with connections open"
            );
        }
        let _ = sweeper.await;
        node.close_storage().await;
        tracing::info!("stopped");
        Ok(())
    }
}

/// How often idle memory streams are looked for.
const SWEEP_INTERVAL: std::time::Duration = std::time::Duration::from_secs(60);

/// Forgets idle memory streams until shutdown.
async fn sweep_streams(node: Arc<Node>) {
    let mut tick = tokio::time::interval(SWEEP_INTERVAL);
    loop {
        tokio::select! {
            _ = node.shutdown.cancelled() => return,
            _ = tick.tick() => node.sweep_streams(),
        }
    }
}

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
    use std::sync::atomic::Ordering::Relaxed;
    let c = &node.counters;
    let h = &node.hub;
    let body = format!(
        "# TYPE herald_connections gauge\nherald_connections {}\n\
         # TYPE herald_users gauge\nherald_users {}\n\
         # TYPE herald_channels gauge\nherald_channels {}\n\
         # TYPE herald_subscriptions gauge\nherald_subscriptions {}\n\
         # TYPE herald_connections_accepted_total counter\nherald_connections_accepted_total {}\n\
         # TYPE herald_publications_total counter\nherald_publications_total {}\n\
         # TYPE herald_slow_disconnects_total counter\nherald_slow_disconnects_total {}\n\
         # TYPE herald_commands_total counter\nherald_commands_total {}\n\
         # TYPE herald_api_requests_total counter\nherald_api_requests_total {}\n\
         # TYPE herald_retention_removed_total counter\nherald_retention_removed_total {}\n",
        h.num_clients(),
        h.num_users(),
        h.num_channels(),
        h.num_subscriptions(),
        c.connections_accepted.load(Relaxed),
        c.publications.load(Relaxed),
        c.slow_disconnects.load(Relaxed),
        c.commands.load(Relaxed),
        c.api_requests.load(Relaxed),
        node.retention_removed(),
    );
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], body)
}
