//! The admin web UI (`admin.enabled`): a page, its script and style, all
//! embedded in the binary, and the API behind them under
//! `admin.handler_prefix` — a login that hands out a session signed with
//! `admin.secret`, the server API's methods, a list of this node's
//! connections, and a live view of one channel ([`watch`]).

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use axum::extract::{ConnectInfo, Path, Query, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use axum::{Extension, Json, Router};
use jsonwebtoken::{DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::api::{self, ApiError};
use crate::config::Admin;
use crate::node::Node;
use crate::ratelimit::PerKey;

mod connections;
mod watch;

const INDEX: &str = include_str!("../static/admin/index.html");
const SCRIPT: &str = include_str!("../static/admin/admin.js");
const STYLE: &str = include_str!("../static/admin/admin.css");

/// Nothing the page loads or calls may come from elsewhere.
const POLICY: &str = "default-src 'self'; img-src 'self' data:; frame-ancestors 'none'";

/// The audience of an admin session, so that no other token signed with
/// the same secret passes for one.
const AUDIENCE: &str = "herald-admin";

/// Who may use the admin API, and the login's limits.
pub struct Gate {
    insecure: bool,
    password: String,
    encoding: EncodingKey,
    decoding: DecodingKey,
    validation: Validation,
    ttl_secs: u64,
    logins: PerKey<IpAddr>,
}

#[derive(Serialize, Deserialize)]
struct Session {
    aud: String,
    exp: u64,
}

impl Gate {
    pub fn new(c: &Admin) -> Self {
        let secret = c.secret.expose().as_bytes();
        let mut validation = Validation::new(jsonwebtoken::Algorithm::HS256);
        validation.set_audience(&[AUDIENCE]);
        validation.leeway = 0;
        Self {
            insecure: c.insecure,
            password: c.password.expose().to_string(),
            encoding: EncodingKey::from_secret(secret),
            decoding: DecodingKey::from_secret(secret),
            validation,
            ttl_secs: c.session_ttl.0.as_secs().max(1),
            logins: PerKey::new(c.login_rate_limit),
        }
    }

    fn issue(&self) -> Option<String> {
        let session = Session {
            aud: AUDIENCE.into(),
            exp: (crate::clock::now_unix().max(0) as u64).saturating_add(self.ttl_secs),
        };
        jsonwebtoken::encode(&Header::default(), &session, &self.encoding).ok()
    }

    /// Whether the request carries a live session (`Authorization: token
    /// …`), or none is needed.
    fn admits(&self, headers: &HeaderMap) -> bool {
        if cross_site(headers) {
            return false;
        }
        if self.insecure {
            return true;
        }
        let Some((scheme, token)) = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.split_once(' '))
        else {
            return false;
        };
        scheme.eq_ignore_ascii_case("token")
            && jsonwebtoken::decode::<Session>(token.trim(), &self.decoding, &self.validation)
                .is_ok()
    }

    fn password_matches(&self, given: &str) -> bool {
        use sha2::{Digest, Sha256};
        use subtle::ConstantTimeEq;
        // Digests are compared, so that not even the length shows.
        let (given, password) = (Sha256::digest(given), Sha256::digest(&self.password));
        !self.password.is_empty() && bool::from(given.ct_eq(&password))
    }
}

/// Whether a browser says the request comes from another site's page (its
/// `Sec-Fetch-Site`, or an `Origin` that is not this host): such requests
/// are refused, so that no page elsewhere can drive an insecure admin.
fn cross_site(headers: &HeaderMap) -> bool {
    let get = |name: header::HeaderName| headers.get(name).and_then(|v| v.to_str().ok());
    if let Some(site) = headers.get("sec-fetch-site").and_then(|v| v.to_str().ok()) {
        if site == "cross-site" || site == "same-site" {
            return true;
        }
    }
    match (get(header::ORIGIN), get(header::HOST)) {
        (Some(origin), Some(host)) => origin.split_once("://").map(|(_, h)| h) != Some(host),
        (Some(_), None) => true,
        _ => false,
    }
}

/// Whether the body is declared JSON: a page elsewhere cannot send that
/// without the browser asking first (CORS), which Herald never allows.
fn declared_json(headers: &HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.trim_start().starts_with("application/json"))
}

/// The UI and its API under the configured prefix.
pub fn routes(c: &Admin) -> Router<Arc<Node>> {
    let p = c.prefix();
    let mut r = Router::new()
        .route(
            &format!("{p}/"),
            get(|| asset(INDEX, "text/html; charset=utf-8")),
        )
        .route(
            &format!("{p}/admin.js"),
            get(|| asset(SCRIPT, "text/javascript; charset=utf-8")),
        )
        .route(
            &format!("{p}/admin.css"),
            get(|| asset(STYLE, "text/css; charset=utf-8")),
        )
        .route(&format!("{p}/init"), get(init))
        .route(&format!("{p}/auth"), post(login))
        .route(&format!("{p}/api/{{method}}"), post(call))
        .route(&format!("{p}/watch"), get(watch::watch));
    if !p.is_empty() {
        // The page's relative links need the trailing slash.
        let slash = format!("{p}/");
        r = r.route(p, get(move || async move { Redirect::permanent(&slash) }));
    }
    r.layer(Extension(Arc::new(Gate::new(c))))
}

async fn asset(body: &'static str, kind: &'static str) -> Response {
    let mut response = body.into_response();
    let h = response.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(kind));
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(POLICY),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    response
}

/// What the page needs before a login: whether it needs one at all.
async fn init(Extension(gate): Extension<Arc<Gate>>, headers: HeaderMap) -> Response {
    Json(json!({
        "insecure": gate.insecure,
        "authenticated": gate.admits(&headers),
        "version": Node::version(),
    }))
    .into_response()
}

#[derive(Deserialize)]
struct Login {
    #[serde(default)]
    password: String,
}

async fn login(
    Extension(gate): Extension<Arc<Gate>>,
    peer: Option<Extension<ConnectInfo<SocketAddr>>>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    if cross_site(&headers) || !declared_json(&headers) {
        return error(
            StatusCode::FORBIDDEN,
            "send JSON ({\"password\": …}) from this site's page",
        );
    }
    let ip = peer.map_or(IpAddr::from([0, 0, 0, 0]), |Extension(ConnectInfo(p))| {
        p.ip()
    });
    if !gate.logins.allow(ip) {
        tracing::info!(%ip, "admin login refused: too many attempts");
        return error(
            StatusCode::TOO_MANY_REQUESTS,
            "too many login attempts; wait a second",
        );
    }
    let Ok(login) = serde_json::from_slice::<Login>(&body) else {
        return error(StatusCode::BAD_REQUEST, "send {\"password\": \"…\"}");
    };
    if gate.insecure {
        return error(
            StatusCode::BAD_REQUEST,
            "admin.insecure is on: no login needed",
        );
    }
    if !gate.password_matches(&login.password) {
        tracing::info!(%ip, "admin login refused: wrong password");
        return error(StatusCode::UNAUTHORIZED, "wrong password");
    }
    match gate.issue() {
        Some(token) => Json(json!({ "token": token, "expires_in": gate.ttl_secs })).into_response(),
        None => error(StatusCode::INTERNAL_SERVER_ERROR, "session not signed"),
    }
}

fn error(status: StatusCode, message: &str) -> Response {
    (status, Json(json!({ "error": message }))).into_response()
}

/// One server API method (or `connections`) for the UI.
async fn call(
    State(node): State<Arc<Node>>,
    Extension(gate): Extension<Arc<Gate>>,
    Path(method): Path<String>,
    headers: HeaderMap,
    body: axum::body::Body,
) -> Response {
    if !gate.admits(&headers) {
        return error(StatusCode::UNAUTHORIZED, "log in first");
    }
    if !declared_json(&headers) {
        return error(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "send parameters as application/json",
        );
    }
    let limit = node.config.http_api.max_request_body_size;
    let timeout = node.config.http_server.request_body_timeout.0;
    let body = match crate::body::read(body, limit, timeout).await {
        Ok(body) if body.iter().all(u8::is_ascii_whitespace) => {
            axum::body::Bytes::from_static(b"{}")
        }
        Ok(body) => body,
        Err(refused) => return refused,
    };
    let outcome = if method == "connections" {
        connections::list(&node, &body).map(|r| json!(r))
    } else {
        match api::read(&method, &body) {
            Ok(request) => api::execute_timed(&node, request, "admin")
                .await
                .map(|r| json!(r)),
            Err(e) => Err(e),
        }
    };
    match outcome {
        Ok(result) => Json(json!({ "result": result })).into_response(),
        Err(ApiError::Status(status, message)) => error(status, &message),
        Err(e) => Json(json!({ "error": e.to_json() })).into_response(),
    }
}

/// The query of [`watch::watch`].
#[derive(Deserialize)]
struct Watched {
    channel: String,
}

type WatchQuery = Query<Watched>;
