//! Wiring: builds the node and the HTTP router from a configuration, binds,
//! serves, and shuts down in order — stop accepting, tell every connection to
//! reconnect elsewhere (3001), wait for them with a grace timeout.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::{DefaultBodyLimit, State};
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::routing::{get, post};
use axum::Router;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::config::{Config, TlsFiles};
use crate::node::{Node, NodeError};
use crate::{api, transport};

mod accept;
mod direct;
mod prefixed;
mod tls;

pub use tls::{Tls, TlsError};

/// A bound, not yet running server.
pub struct Server {
    node: Arc<Node>,
    listener: TcpListener,
    /// The listener's TLS, when `http_server.tls.enabled`.
    tls: Option<Arc<Tls>>,
    /// The gRPC API's, when enabled, and its TLS files.
    grpc: Option<(TcpListener, Option<TlsFiles>)>,
    /// The unidirectional gRPC transport's listener, when enabled.
    uni_grpc: Option<(TcpListener, Option<TlsFiles>)>,
    /// The internal listener (`/health`, `/metrics`), when configured.
    internal: Option<TcpListener>,
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
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
    #[error("cannot set up TLS")]
    Tls(#[from] TlsError),
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
        let tls = Tls::load(&config.http_server.tls)?;
        let listener = TcpListener::bind(&addr)
            .await
            .map_err(|source| ServeError::Bind { addr, source })?;
        let g = &config.grpc_api;
        let grpc = match g.enabled {
            true => Some(grpc_listener("grpc_api", &g.address, g.port, &g.tls).await?),
            false => None,
        };
        let u = &config.uni_grpc;
        let uni_grpc = match u.enabled {
            true => Some(grpc_listener("uni_grpc", &u.address, u.port, &u.tls).await?),
            false => None,
        };
        let internal = match config.http_server.internal() {
            Some(addr) => Some(
                TcpListener::bind(&addr)
                    .await
                    .map_err(|source| ServeError::Bind { addr, source })?,
            ),
            None => None,
        };
        let node = Node::open(config).await?;
        Ok(Self {
            node,
            listener,
            tls,
            grpc,
            uni_grpc,
            internal,
        })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.listener
            .local_addr()
            .expect("bound listener has an address")
    }

    /// The listener's TLS (to reload it on SIGHUP), when enabled.
    pub fn tls(&self) -> Option<Arc<Tls>> {
        self.tls.clone()
    }

    /// The internal listener's address, when one is configured.
    pub fn internal_addr(&self) -> Option<SocketAddr> {
        self.internal.as_ref().and_then(|l| l.local_addr().ok())
    }

    /// The gRPC API's address, when it is enabled.
    pub fn grpc_addr(&self) -> Option<SocketAddr> {
        self.grpc.as_ref().and_then(|(l, _)| api::grpc::describe(l))
    }

    /// The unidirectional gRPC transport's address, when it is enabled.
    pub fn uni_grpc_addr(&self) -> Option<SocketAddr> {
        self.uni_grpc
            .as_ref()
            .and_then(|(l, _)| api::grpc::describe(l))
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
        tracing::info!(%addr, tls = self.tls.is_some(), node = %node.cluster().name(), version = Node::version(), "listening");
        if node.config.dev {
            tracing::info!(
                "demo chat: open http://localhost:{}/ in two browser tabs",
                addr.port()
            );
        }
        if let Some((grpc, tls)) = self.grpc {
            if let Some(addr) = api::grpc::describe(&grpc) {
                tracing::info!(%addr, tls = tls.is_some(), "gRPC API listening");
            }
            if node.config.grpc_api.key.is_empty() {
                tracing::warn!("grpc_api.key is not set: gRPC API calls need no key");
            }
            let (node, stop) = (node.clone(), node.shutdown().clone());
            tokio::spawn(async move {
                if let Err(e) = api::grpc::serve(node, grpc, tls, stop).await {
                    tracing::error!(error = %crate::report::Chain(&e), "gRPC API stopped");
                }
            });
        }
        if let Some((listener, tls)) = self.uni_grpc {
            if let Some(addr) = api::grpc::describe(&listener) {
                tracing::info!(%addr, tls = tls.is_some(), "uni_grpc listening");
            }
            let (node, stop) = (node.clone(), node.shutdown().clone());
            tokio::spawn(async move {
                if let Err(e) = transport::uni_grpc::serve(node, listener, tls, stop).await {
                    tracing::error!(error = %crate::report::Chain(&e), "uni_grpc stopped");
                }
            });
        }
        let stop = node.shutdown().clone();
        let header_timeout = node.config.http_server.header_read_timeout.0;
        let router = match self.internal {
            Some(internal) => {
                tracing::info!(addr = %internal.local_addr()?, "internal listening (health, metrics, admin)");
                let ops = operations(Router::new(), &node.config).with_state(node.clone());
                let stop = stop.clone();
                let none = direct::Streams::default();
                tokio::spawn(accept::accept(
                    internal,
                    ops,
                    None,
                    stop,
                    header_timeout,
                    none,
                ));
                router(node.clone())
            }
            None => operations(router(node.clone()), &node.config),
        };
        let router = router.with_state(node.clone());
        let streams = direct::Streams::of(&node.config);
        accept::accept(
            self.listener,
            router,
            self.tls,
            stop,
            header_timeout,
            streams,
        )
        .await;
        // Connections close themselves as the shutdown token fires, so a
        // count taken now would race them: they are counted as they close.
        tracing::info!("shutting down: closing connections");
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
        tracing::info!(
            connections = node
                .counters
                .shutdown_closes
                .load(std::sync::atomic::Ordering::Relaxed),
            "connections closed, told to reconnect elsewhere"
        );
        node.close().await;
        tracing::info!("stopped");
        Ok(())
    }
}

/// What operators ask: `/health` (and `/health/live`), `/metrics`, and
/// the admin UI unless `admin.external` puts it on the public port.
fn operations(mut r: Router<Arc<Node>>, c: &Config) -> Router<Arc<Node>> {
    if c.health.enabled {
        let prefix = c.health.handler_prefix.trim_end_matches('/');
        r = r
            .route(&c.health.handler_prefix, get(health))
            // Liveness: the process answers, whatever its services do.
            .route(
                &format!("{prefix}/live"),
                get(|| async { axum::Json(serde_json::json!({})) }),
            );
    }
    if c.prometheus.enabled {
        r = r.route("/metrics", get(metrics));
    }
    if c.admin.enabled && !c.admin.external {
        r = r.merge(crate::admin::routes(&c.admin));
    }
    r
}

/// Clients' transports, the server API, Swagger UI, the demo.
fn router(node: Arc<Node>) -> Router<Arc<Node>> {
    use transport::stream;
    let c = &node.config;
    let mut r = Router::new();
    // The handlers of the HTTP transports read bodies themselves, with a
    // deadline and the size limit; pages of allowed origins may call them
    // from elsewhere (CORS).
    let cors = axum::middleware::from_fn_with_state(node.clone(), transport::cors::cors);
    let [uni_http_stream, uni_sse, http_stream, sse, emulation] = c.stream_paths();
    let streams = [
        (uni_http_stream, post(stream::uni_http_stream)),
        (uni_sse, get(stream::uni_sse).post(stream::uni_sse)),
        (http_stream, post(stream::http_stream)),
        (sse, get(stream::sse).post(stream::sse)),
        (emulation, post(transport::emulation::emulation)),
    ];
    for (path, handler) in streams {
        if let Some(path) = path {
            let handler = handler
                .layer(DefaultBodyLimit::disable())
                .layer(cors.clone());
            r = r.route(path, handler);
        }
    }
    if c.uni_websocket.enabled {
        r = r.route(
            &c.uni_websocket.handler_prefix,
            get(transport::websocket::upgrade_uni),
        );
    }
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
            // The handler reads the body itself, with a deadline and the
            // size limit.
            post(api::handle).layer(DefaultBodyLimit::disable()),
        );
    }
    if c.swagger.enabled {
        let prefix = c.swagger.handler_prefix.trim_end_matches('/');
        let doc = api::openapi::document(&c.http_api.handler_prefix);
        r = r.merge(
            utoipa_swagger_ui::SwaggerUi::new(prefix.to_string())
                .url(format!("{prefix}/openapi.json"), doc),
        );
    }
    if !c.pusher.apps.is_empty() {
        r = r.merge(crate::pusher::routes(&c.pusher));
    }
    if c.admin.enabled && c.admin.external {
        r = r.merge(crate::admin::routes(&c.admin));
    }
    // An admin UI at the root (an empty prefix) takes the demo's place.
    let admin_at_root = c.admin.enabled && c.admin.prefix().is_empty();
    if c.dev && !(admin_at_root && (c.admin.external || c.http_server.internal().is_none())) {
        r = r.merge(crate::demo::routes());
    }
    r
}

/// Readiness: 200 when every service the node depends on answers, 503 when
/// one does not, with each one's state.
async fn health(State(node): State<Arc<Node>>) -> impl IntoResponse {
    let checks = node.health().await;
    let ok = checks.iter().all(|c| c.error.is_none());
    let status = |ok: bool| if ok { "ok" } else { "unavailable" };
    let mut body = serde_json::Map::new();
    for c in &checks {
        let mut check = serde_json::json!({"status": status(c.error.is_none()), "type": c.kind});
        if let Some(e) = &c.error {
            check["error"] = e.clone().into();
        }
        body.insert(c.name.to_string(), check);
    }
    let code = if ok {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (
        code,
        axum::Json(serde_json::json!({"status": status(ok), "checks": body})),
    )
}

async fn metrics(State(node): State<Arc<Node>>) -> impl IntoResponse {
    let samples = crate::metrics::samples(
        &node.counters,
        &node.hub,
        node.retention_removed(),
        node.cluster().reconnects(),
    );
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        node.metrics.render(samples, node.commit_metrics()),
    )
}

/// Binds a gRPC listener with its TLS (`key` names the config section).
async fn grpc_listener(
    key: &str,
    address: &str,
    port: u16,
    tls: &crate::config::TlsConfig,
) -> Result<(TcpListener, Option<TlsFiles>), ServeError> {
    let tls = tls.load(&format!("{key}.tls"))?;
    let listener = api::grpc::bind(address, port)
        .await
        .map_err(|source| ServeError::Bind {
            addr: format!("{address}:{port} ({key})"),
            source,
        })?;
    Ok((listener, tls))
}
