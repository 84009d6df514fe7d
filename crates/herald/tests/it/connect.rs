//! Connecting: tokens of every supported kind, anonymous access, expiry and
//! refresh, server-side subscriptions, origins and connection limits.

use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::json;

use herald_testkit::*;

#[tokio::test]
async fn connect_with_token_returns_client_and_ping_settings() {
    let s = TestServer::start(json!({})).await;
    let mut ws = Ws::open(&s.ws_url()).await;
    let r = ws
        .cmd(json!({"connect": {"token": token(json!({"sub": "42"})), "name": "test"}}))
        .await;
    let c = &r["connect"];
    assert_eq!(c["client"].as_str().unwrap().len(), 36, "{r}");
    assert_eq!(c["version"], env!("CARGO_PKG_VERSION"));
    assert_eq!(c["ping"], 25);
    assert_eq!(c["pong"], true);
    assert!(
        c.get("expires").is_none(),
        "a token without exp does not expire: {r}"
    );
    assert!(c.get("time").is_none(), "no server time unless asked: {r}");
    s.stop().await;
}

#[tokio::test]
async fn connect_include_server_time_puts_the_time_in_the_reply() {
    let s = TestServer::start(json!({"client": {"connect_include_server_time": true}})).await;
    let before = now() * 1000;
    let mut ws = Ws::open(&s.ws_url()).await;
    let r = ws
        .cmd(json!({"connect": {"token": token(json!({"sub": "42"}))}}))
        .await;
    let after = (now() + 1) * 1000;
    let time = r["connect"]["time"].as_i64().expect("a time");
    assert!(
        (before..=after).contains(&time),
        "Unix milliseconds now: {r}"
    );
    s.stop().await;
}

#[tokio::test]
async fn anonymous_connect_needs_permission() {
    let s = TestServer::start(json!({})).await;
    let mut ws = Ws::open(&s.ws_url()).await;
    let r = ws.cmd(json!({"connect": {}})).await;
    assert_eq!(r["error"]["code"], 101, "{r}");
    let s2 =
        TestServer::start(json!({"client": {"allow_anonymous_connect_without_token": true}})).await;
    let mut ws = Ws::open(&s2.ws_url()).await;
    let r = ws.cmd(json!({"connect": {}})).await;
    assert!(r["connect"]["client"].is_string(), "{r}");
    s.stop().await;
    s2.stop().await;
}

#[tokio::test]
async fn bad_tokens_close_with_3500_and_expired_gets_109() {
    let s = TestServer::start(json!({})).await;
    for bad in [
        herald::auth::sign_hs256(&json!({"sub": "1"}), "wrong-secret").unwrap(),
        "not.a.token".to_string(),
        token(json!({"sub": "1", "channel": "a subscription token"})),
    ] {
        let mut ws = Ws::open(&s.ws_url()).await;
        ws.send(json!({"connect": {"token": bad}})).await;
        assert_eq!(ws.closed().await, (3500, "invalid token".into()));
    }
    let mut ws = Ws::open(&s.ws_url()).await;
    let r = ws
        .cmd(json!({"connect": {"token": token(json!({"sub": "1", "exp": now() - 5}))}}))
        .await;
    assert_eq!(r["error"]["code"], 109, "{r}");
    s.stop().await;
}

#[tokio::test]
async fn rsa_and_ecdsa_tokens() {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures");
    let rsa_pub = std::fs::read_to_string(format!("{dir}/rsa_public.pem")).unwrap();
    let ec_pub = std::fs::read_to_string(format!("{dir}/ec_public.pem")).unwrap();
    let s = TestServer::start(
        json!({"client": {"token": {"rsa_public_key": rsa_pub, "ecdsa_public_key": ec_pub}}}),
    )
    .await;
    let rsa_key =
        EncodingKey::from_rsa_pem(&std::fs::read(format!("{dir}/rsa_private.pem")).unwrap())
            .unwrap();
    let ec_key =
        EncodingKey::from_ec_pem(&std::fs::read(format!("{dir}/ec_private.pem")).unwrap()).unwrap();
    for (alg, key) in [(Algorithm::RS256, &rsa_key), (Algorithm::ES256, &ec_key)] {
        let t = jsonwebtoken::encode(&Header::new(alg), &json!({"sub": "k"}), key).unwrap();
        let mut ws = Ws::open(&s.ws_url()).await;
        let r = ws.cmd(json!({"connect": {"token": t}})).await;
        assert!(r["connect"]["client"].is_string(), "{alg:?}: {r}");
    }
    s.stop().await;
}

#[tokio::test]
async fn protocol_violations_close_with_3501() {
    let s = TestServer::start(json!({})).await;
    let mut ws = Ws::open(&s.ws_url()).await;
    ws.send(json!({"subscribe": {"channel": "x"}})).await;
    assert_eq!(
        ws.closed().await,
        (3501, "bad request".into()),
        "command before connect"
    );

    let mut ws = Ws::open(&s.ws_url()).await;
    ws.send_text("{\"id\":1,\"connect\":").await;
    assert_eq!(ws.closed().await.0, 3501, "malformed JSON");

    let mut ws = s.client("1").await;
    ws.send(json!({"connect": {"token": token(json!({"sub": "1"}))}}))
        .await;
    assert_eq!(ws.closed().await.0, 3501, "second connect");

    let mut ws = s.client("1").await;
    ws.send_text(r#"{"publish":{"channel":"x","data":{}}}"#)
        .await;
    assert_eq!(ws.closed().await.0, 3501, "command without id");
    s.stop().await;
}

#[tokio::test]
async fn stale_connection_without_connect_closes_with_3502() {
    let s = TestServer::start(json!({"client": {"stale_close_delay": "300ms"}})).await;
    let mut ws = Ws::open(&s.ws_url()).await;
    assert_eq!(ws.closed().await, (3502, "stale".into()));
    s.stop().await;
}

#[tokio::test]
async fn expiring_connection_is_closed_unless_refreshed() {
    let s = TestServer::start(json!({"client": {"expired_close_delay": "0s"}})).await;
    let mut ws = Ws::open(&s.ws_url()).await;
    let r = ws
        .cmd(json!({"connect": {"token": token(json!({"sub": "1", "exp": now() + 1}))}}))
        .await;
    assert_eq!(r["connect"]["expires"], true, "{r}");
    assert!(r["connect"]["ttl"].as_u64().unwrap() <= 1);
    assert_eq!(ws.closed().await, (3005, "connection expired".into()));

    let mut ws = Ws::open(&s.ws_url()).await;
    ws.cmd(json!({"connect": {"token": token(json!({"sub": "1", "exp": now() + 1}))}}))
        .await;
    let r = ws
        .cmd(json!({"refresh": {"token": token(json!({"sub": "1", "exp": now() + 60}))}}))
        .await;
    assert_eq!(r["refresh"]["expires"], true, "{r}");
    assert!(r["refresh"]["ttl"].as_u64().unwrap() > 50, "{r}");
    // Time must pass, not an event: the old expiry goes by unnoticed.
    tokio::time::sleep(std::time::Duration::from_millis(2200)).await;
    let r = ws.cmd(json!({"ping": {}})).await;
    assert!(
        r.get("ping").is_some(),
        "still connected after the old expiry: {r}"
    );
    s.stop().await;
}

#[tokio::test]
async fn refresh_with_expired_token_closes_3005_and_foreign_user_3500() {
    let s = TestServer::start(json!({})).await;
    let mut ws = s.client("1").await;
    // Too late to refresh: reconnecting (3005 allows it) fetches a new token.
    ws.send(json!({"refresh": {"token": token(json!({"sub": "1", "exp": now() - 1}))}}))
        .await;
    assert_eq!(ws.closed().await, (3005, "connection expired".into()));
    let mut ws = s.client("1").await;
    ws.send(json!({"refresh": {"token": token(json!({"sub": "2"}))}}))
        .await;
    assert_eq!(ws.closed().await.0, 3500);
    s.stop().await;
}

#[tokio::test]
async fn server_side_subscriptions_from_token() {
    let s = TestServer::start(json!({})).await;
    let mut ws = Ws::open(&s.ws_url()).await;
    let t = token(json!({"sub": "7", "channels": ["news", "nope:x"]}));
    let r = ws.cmd(json!({"connect": {"token": t}})).await;
    let subs = r["connect"]["subs"].as_object().unwrap();
    assert!(subs.contains_key("news"), "{r}");
    assert!(
        !subs.contains_key("nope:x"),
        "unknown namespaces are skipped: {r}"
    );
    s.api("publish", json!({"channel": "news", "data": {"n": 1}}))
        .await;
    let p = ws.push().await;
    assert_eq!(p["channel"], "news");
    assert_eq!(p["pub"]["data"], json!({"n": 1}));

    // `subs` wins over `channels`, and carries data for the client.
    let mut ws = Ws::open(&s.ws_url()).await;
    let t = token(
        json!({"sub": "7", "channels": ["news"], "subs": {"chat:lobby": {"data": {"hi": 1}}}}),
    );
    let r = ws.cmd(json!({"connect": {"token": t}})).await;
    assert_eq!(
        r["connect"]["subs"],
        json!({"chat:lobby": {"data": {"hi": 1}}}),
        "{r}"
    );
    s.stop().await;
}

#[tokio::test]
async fn disallowed_origin_is_refused_at_upgrade() {
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    let s = TestServer::start(json!({})).await;
    let mut req = s.ws_url().into_client_request().unwrap();
    req.headers_mut()
        .insert("Origin", "http://evil.example".parse().unwrap());
    let err = tokio_tungstenite::connect_async(req).await.unwrap_err();
    assert!(err.to_string().contains("403"), "{err}");
    let mut req = s.ws_url().into_client_request().unwrap();
    req.headers_mut()
        .insert("Origin", "http://allowed.example".parse().unwrap());
    assert!(tokio_tungstenite::connect_async(req).await.is_ok());
    s.stop().await;
}

#[tokio::test]
async fn connection_limits_per_user_and_node() {
    let s =
        TestServer::start(json!({"client": {"user_connection_limit": 2, "connection_limit": 3}}))
            .await;
    let _a = s.client("u").await;
    let _b = s.client("u").await;
    let mut ws = Ws::open(&s.ws_url()).await;
    ws.send(json!({"connect": {"token": token(json!({"sub": "u"}))}}))
        .await;
    assert_eq!(ws.closed().await, (3504, "connection limit".into()));
    let _c = s.client("v").await;
    let mut ws = Ws::open(&s.ws_url()).await;
    ws.send(json!({"connect": {"token": token(json!({"sub": "w"}))}}))
        .await;
    assert_eq!(ws.closed().await.0, 3504, "node limit");
    s.stop().await;
}

/// Rotating the HMAC secret: tokens signed with the previous one connect
/// while `hmac_previous_secret_key_valid_until` lasts, and not after.
#[tokio::test]
async fn tokens_of_the_previous_hmac_secret_connect_during_a_rotation() {
    let old_token = herald::auth::sign_hs256(&json!({"sub": "rot"}), "the-old-secret").unwrap();
    let connect = |s: &TestServer| {
        let url = s.ws_url();
        let token = old_token.clone();
        async move {
            let mut ws = Ws::open(&url).await;
            let id = ws.send(json!({"connect": {"token": token}})).await;
            match ws.next().await {
                Event::Msg(m) if m["id"] == json!(id) => m,
                other => panic!("{other:?}"),
            }
        }
    };
    let s = TestServer::start(json!({"client": {"token": {
        "hmac_previous_secret_key": "the-old-secret",
        "hmac_previous_secret_key_valid_until": now() + 3600}}}))
    .await;
    let r = connect(&s).await;
    assert!(r["connect"].is_object(), "{r}");
    s.stop().await;

    let s = TestServer::start(json!({"client": {"token": {
        "hmac_previous_secret_key": "the-old-secret",
        "hmac_previous_secret_key_valid_until": now() - 1}}}))
    .await;
    let mut ws = Ws::open(&s.ws_url()).await;
    ws.send(json!({"connect": {"token": old_token}})).await;
    assert_eq!(ws.closed().await.0, 3500);
    s.stop().await;
}
