//! Keys from a JWKS endpoint (`client.token.jwks_public_endpoint`): fetched
//! on first need, kept by key id, fetched again when a token names a key id
//! not known yet (at most once per [`REFETCH_PAUSE`], so that tokens with
//! made-up key ids cannot make Herald hammer the endpoint) and when the set
//! is older than [`MAX_AGE`]. A fetch is bounded in time and size; while a
//! fetch fails, the keys already known keep working.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::http::{header, Uri};
use hyper_util::rt::TokioIo;
use rustls::pki_types::ServerName;
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, Jwk, JwkSet};
use jsonwebtoken::{Algorithm, DecodingKey};
use parking_lot::RwLock;
use tokio::time::Instant;

/// Longest a fetch may take.
pub const FETCH_TIMEOUT: Duration = Duration::from_secs(5);
/// Largest key set accepted.
const MAX_BYTES: usize = 1024 * 1024;
/// Least time between two fetches.
pub const REFETCH_PAUSE: Duration = Duration::from_secs(10);
/// A key set older than this is fetched again at the next need.
pub const MAX_AGE: Duration = Duration::from_secs(3600);

/// A key from the set: what it verifies and which algorithms it may.
#[derive(Clone)]
pub struct JwksKey {
    pub key: DecodingKey,
    /// The algorithms the key's type allows (a key's `alg`, when given,
    /// narrows it to one).
    pub algorithms: Vec<Algorithm>,
}

#[derive(Default)]
struct Cache {
    keys: HashMap<String, JwksKey>,
    fetched_at: Option<Instant>,
    tried_at: Option<Instant>,
}

pub struct Jwks {
    url: String,
    /// For https: the system's root certificates.
    tls: TlsConnector,
    cache: RwLock<Cache>,
    /// One fetch at a time; those waiting use its outcome.
    fetching: tokio::sync::Mutex<()>,
}

impl Jwks {
    pub fn new(url: &str) -> Result<Self, String> {
        let uri: Uri = url.parse().map_err(|e| format!("{e}"))?;
        if !matches!(uri.scheme_str(), Some("http" | "https")) || uri.host().is_none() {
            return Err("use an http:// or https:// URL".into());
        }
        let config = crate::client_tls::config()?;
        Ok(Self {
            url: url.to_string(),
            tls: TlsConnector::from(Arc::new(config)),
            cache: RwLock::new(Cache::default()),
            fetching: tokio::sync::Mutex::new(()),
        })
    }

    /// The key with `kid`, if known now.
    pub fn key(&self, kid: &str) -> Option<JwksKey> {
        self.cache.read().keys.get(kid).cloned()
    }

    /// Makes sure the key `kid` is known if the endpoint has it: fetches
    /// the set when the key is unknown or the set is old, unless a fetch
    /// was tried within [`REFETCH_PAUSE`].
    pub async fn prepare(&self, kid: &str) {
        if !self.wants_fetch(kid) {
            return;
        }
        let _one = self.fetching.lock().await;
        // Another caller may have fetched while this one waited.
        if !self.wants_fetch(kid) {
            return;
        }
        self.cache.write().tried_at = Some(Instant::now());
        match self.fetch().await {
            Ok(keys) => {
                let mut cache = self.cache.write();
                tracing::debug!(url = %self.url, keys = keys.len(), "JWKS fetched");
                cache.keys = keys;
                cache.fetched_at = Some(Instant::now());
            }
            Err(e) => tracing::warn!(url = %self.url, error = %e, "JWKS not fetched"),
        }
    }

    fn wants_fetch(&self, kid: &str) -> bool {
        let cache = self.cache.read();
        let now = Instant::now();
        let old = cache
            .fetched_at
            .is_none_or(|at| now.saturating_duration_since(at) > MAX_AGE);
        let unknown = !cache.keys.contains_key(kid);
        let paused = cache
            .tried_at
            .is_some_and(|at| now.saturating_duration_since(at) < REFETCH_PAUSE);
        (old || unknown) && !paused
    }

    async fn fetch(&self) -> Result<HashMap<String, JwksKey>, String> {
        let body = tokio::time::timeout(FETCH_TIMEOUT, self.get())
            .await
            .map_err(|_| format!("no answer within {FETCH_TIMEOUT:?}"))??;
        let set: JwkSet = serde_json::from_slice(&body).map_err(|e| e.to_string())?;
        Ok(keys_of(&set))
    }

    /// The endpoint's body (one HTTP/1.1 GET, over TLS for https).
    async fn get(&self) -> Result<Bytes, String> {
        let uri: Uri = self.url.parse().map_err(|e| format!("{e}"))?;
        let https = uri.scheme_str() == Some("https");
        let host = uri.host().unwrap_or_default().to_string();
        let port = uri.port_u16().unwrap_or(if https { 443 } else { 80 });
        let request = hyper::Request::get(uri.path_and_query().map_or("/", |p| p.as_str()))
            .header(
                header::HOST,
                uri.authority().map_or(host.as_str(), |a| a.as_str()),
            )
            .header(header::ACCEPT, "application/json")
            .body(Body::empty())
            .map_err(|e| e.to_string())?;
        let tcp = TcpStream::connect((host.as_str(), port))
            .await
            .map_err(|e| e.to_string())?;
        if https {
            let name = ServerName::try_from(host).map_err(|e| e.to_string())?;
            let tls = self
                .tls
                .connect(name, tcp)
                .await
                .map_err(|e| e.to_string())?;
            send(TokioIo::new(tls), request).await
        } else {
            send(TokioIo::new(tcp), request).await
        }
    }
}

async fn send<IO>(io: IO, request: hyper::Request<Body>) -> Result<Bytes, String>
where
    IO: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let (mut sender, connection) = hyper::client::conn::http1::handshake(io)
        .await
        .map_err(|e| e.to_string())?;
    tokio::spawn(connection);
    let response = sender
        .send_request(request)
        .await
        .map_err(|e| e.to_string())?;
    if !response.status().is_success() {
        return Err(format!("HTTP {}", response.status()));
    }
    axum::body::to_bytes(Body::new(response.into_body()), MAX_BYTES)
        .await
        .map_err(|_| format!("the key set is over {MAX_BYTES} bytes, or was cut short"))
}

/// The usable keys of a set, by key id (keys without one, or of a kind
/// tokens cannot use, are skipped).
fn keys_of(set: &JwkSet) -> HashMap<String, JwksKey> {
    let mut keys = HashMap::new();
    for jwk in &set.keys {
        let Some(kid) = jwk.common.key_id.clone() else {
            continue;
        };
        let Ok(key) = DecodingKey::from_jwk(jwk) else {
            continue;
        };
        let algorithms = algorithms_of(jwk);
        if !algorithms.is_empty() {
            keys.insert(kid, JwksKey { key, algorithms });
        }
    }
    keys
}

fn algorithms_of(jwk: &Jwk) -> Vec<Algorithm> {
    use Algorithm::*;
    let by_type = match &jwk.algorithm {
        AlgorithmParameters::RSA(_) => vec![RS256, RS384, RS512, PS256, PS384, PS512],
        AlgorithmParameters::EllipticCurve(ec) => match ec.curve {
            EllipticCurve::P256 => vec![ES256],
            EllipticCurve::P384 => vec![ES384],
            _ => Vec::new(),
        },
        AlgorithmParameters::OctetKeyPair(okp) => match okp.curve {
            EllipticCurve::Ed25519 => vec![EdDSA],
            _ => Vec::new(),
        },
        // Shared secrets are not published keys; other kinds are unknown.
        _ => Vec::new(),
    };
    let named = jwk
        .common
        .key_algorithm
        .map(|a| a.to_string().parse::<Algorithm>());
    match named {
        // An `alg` that names no signing algorithm (an encryption key).
        Some(Err(_)) => Vec::new(),
        Some(Ok(alg)) if by_type.contains(&alg) => vec![alg],
        Some(Ok(_)) => Vec::new(),
        None => by_type,
    }
}
