//! Keys from a JWKS endpoint (`client.token.jwks_public_endpoint`): fetched
//! on first need, kept by key id, fetched again when a token names a key id
//! not known yet (at most once per [`REFETCH_PAUSE`], so that tokens with
//! made-up key ids cannot make Herald hammer the endpoint) and when the set
//! is older than [`MAX_AGE`]. A fetch is bounded in time and size; while a
//! fetch fails, the keys already known keep working.

use std::collections::HashMap;
use std::time::Duration;

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
    http: reqwest::Client,
    cache: RwLock<Cache>,
    /// One fetch at a time; those waiting use its outcome.
    fetching: tokio::sync::Mutex<()>,
}

impl Jwks {
    pub fn new(url: &str) -> Result<Self, String> {
        // reqwest is built without a TLS provider of its own: use ring, as
        // the rest of the process does (a second install is a no-op).
        let _ = rustls::crypto::ring::default_provider().install_default();
        let http = reqwest::Client::builder()
            .timeout(FETCH_TIMEOUT)
            .build()
            .map_err(|e| e.to_string())?;
        Ok(Self {
            url: url.to_string(),
            http,
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
        let mut response = self
            .http
            .get(&self.url)
            .send()
            .await
            .map_err(|e| e.to_string())?;
        if !response.status().is_success() {
            return Err(format!("HTTP {}", response.status()));
        }
        let mut body = Vec::new();
        while let Some(chunk) = response.chunk().await.map_err(|e| e.to_string())? {
            body.extend_from_slice(&chunk);
            if body.len() > MAX_BYTES {
                return Err(format!("the key set is over {MAX_BYTES} bytes"));
            }
        }
        let set: JwkSet = serde_json::from_slice(&body).map_err(|e| e.to_string())?;
        Ok(keys_of(&set))
    }
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
