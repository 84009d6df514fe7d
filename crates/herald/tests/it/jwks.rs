//! Tokens verified with keys from a JWKS endpoint (a local HTTP server made
//! here): RSA, ECDSA and Ed25519 keys by key id, one fetch for many tokens,
//! no fetch storm from made-up key ids, a key refused for an algorithm it
//! does not take, and a failing endpoint answered with 3500, not a hang.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use jsonwebtoken::jwk::{Jwk, JwkSet};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{json, Value};

use herald_testkit::*;

/// Serves `set` at `/jwks` (or HTTP 500 when `None`), counting requests.
async fn serve_jwks(set: Option<Value>) -> (String, Arc<AtomicUsize>) {
    let hits = Arc::new(AtomicUsize::new(0));
    let counted = hits.clone();
    let app = axum::Router::new().route(
        "/jwks",
        axum::routing::get(move || {
            counted.fetch_add(1, Ordering::SeqCst);
            let set = set.clone();
            async move {
                match set {
                    Some(set) => (axum::http::StatusCode::OK, set.to_string()),
                    None => (axum::http::StatusCode::INTERNAL_SERVER_ERROR, String::new()),
                }
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/jwks", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    (url, hits)
}

/// A signing key and its public JWK with key id `kid`.
fn key(alg: Algorithm, kid: &str) -> (EncodingKey, Value) {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures");
    let encoding = match alg {
        Algorithm::RS256 => {
            EncodingKey::from_rsa_pem(&std::fs::read(format!("{dir}/rsa_private.pem")).unwrap())
                .unwrap()
        }
        Algorithm::ES256 => {
            EncodingKey::from_ec_pem(&std::fs::read(format!("{dir}/ec_private.pem")).unwrap())
                .unwrap()
        }
        _ => {
            use base64::Engine as _;
            let pair = rcgen::KeyPair::generate_for(&rcgen::PKCS_ED25519).unwrap();
            let encoding = EncodingKey::from_ed_pem(pair.serialize_pem().as_bytes()).unwrap();
            let x = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(pair.public_key_raw());
            let jwk = json!({"kty": "OKP", "crv": "Ed25519", "x": x, "kid": kid});
            return (encoding, jwk);
        }
    };
    let mut jwk = Jwk::from_encoding_key(&encoding, alg).unwrap();
    jwk.common.key_id = Some(kid.to_string());
    (encoding, serde_json::to_value(jwk).unwrap())
}

fn signed(alg: Algorithm, kid: &str, key: &EncodingKey, user: &str) -> String {
    let mut header = Header::new(alg);
    header.kid = Some(kid.to_string());
    jsonwebtoken::encode(&header, &json!({"sub": user}), key).unwrap()
}

/// The connect reply to `token`, or the close code.
async fn connect(s: &TestServer, token: &str) -> Result<Value, u16> {
    let mut ws = Ws::open(&s.ws_url()).await;
    let id = ws.send(json!({"connect": {"token": token}})).await;
    match ws.next().await {
        Event::Msg(m) if m["id"] == json!(id) => Ok(m),
        Event::Closed(Some((code, _))) => Err(code),
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn tokens_verified_with_keys_from_jwks() {
    let (rsa, rsa_jwk) = key(Algorithm::RS256, "rsa-1");
    let (ec, ec_jwk) = key(Algorithm::ES256, "ec-1");
    let (ed, ed_jwk) = key(Algorithm::EdDSA, "ed-1");
    let set = serde_json::to_value(JwkSet {
        keys: [rsa_jwk, ec_jwk, ed_jwk]
            .into_iter()
            .map(|k| serde_json::from_value(k).unwrap())
            .collect(),
    })
    .unwrap();
    let (url, hits) = serve_jwks(Some(set)).await;
    let s = TestServer::start(json!({"client": {"token": {"jwks_public_endpoint": url}}})).await;

    for (alg, kid, key, user) in [
        (Algorithm::RS256, "rsa-1", &rsa, "r"),
        (Algorithm::ES256, "ec-1", &ec, "e"),
        (Algorithm::EdDSA, "ed-1", &ed, "d"),
    ] {
        let reply = connect(&s, &signed(alg, kid, key, user)).await.unwrap();
        assert!(reply["connect"]["client"].is_string(), "{alg:?}: {reply}");
    }
    assert_eq!(hits.load(Ordering::SeqCst), 1, "one fetch for every key");
    // HMAC tokens still use the configured secret.
    assert!(connect(&s, &token(json!({"sub": "h"}))).await.is_ok());

    // A made-up key id is refused, without another fetch so soon.
    assert_eq!(
        connect(&s, &signed(Algorithm::RS256, "nope", &rsa, "x")).await,
        Err(3500)
    );
    assert_eq!(
        connect(&s, &signed(Algorithm::RS256, "nope2", &rsa, "x")).await,
        Err(3500)
    );
    assert_eq!(hits.load(Ordering::SeqCst), 1);
    // A key used with an algorithm its type does not take.
    assert_eq!(
        connect(&s, &signed(Algorithm::RS384, "ec-1", &rsa, "x")).await,
        Err(3500)
    );
    // A token of the right key id signed by another key.
    let (other, _) = key(Algorithm::EdDSA, "ed-1");
    assert_eq!(
        connect(&s, &signed(Algorithm::EdDSA, "ed-1", &other, "x")).await,
        Err(3500)
    );
    s.stop().await;
}

#[tokio::test]
async fn a_failing_jwks_endpoint_refuses_its_tokens() {
    let (url, hits) = serve_jwks(None).await;
    let s = TestServer::start(json!({"client": {"token": {"jwks_public_endpoint": url}}})).await;
    let (rsa, _) = key(Algorithm::RS256, "rsa-1");
    assert_eq!(
        connect(&s, &signed(Algorithm::RS256, "rsa-1", &rsa, "x")).await,
        Err(3500)
    );
    assert_eq!(hits.load(Ordering::SeqCst), 1);
    // The rest of the server goes on.
    assert!(connect(&s, &token(json!({"sub": "h"}))).await.is_ok());
    s.stop().await;
}
