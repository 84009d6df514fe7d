//! User blocking and token revocation through the server API: what happens
//! to open connections and subscriptions, what happens to the next connect,
//! and that rules kept in durable storage survive a restart.

use serde_json::{json, Value};

use herald_testkit::*;

/// Opens a connection with a token of `claims`; the connect reply.
async fn connect(s: &TestServer, claims: Value) -> (Ws, Value) {
    let mut ws = Ws::open(&s.ws_url()).await;
    let id = ws.send(json!({"connect": {"token": token(claims)}})).await;
    match ws.next().await {
        Event::Msg(m) if m["id"] == json!(id) => (ws, m),
        other => panic!("no connect reply: {other:?}"),
    }
}

/// A connect that the server answers by closing with `code`.
async fn refused(s: &TestServer, claims: Value, code: u16) {
    let mut ws = Ws::open(&s.ws_url()).await;
    ws.send(json!({"connect": {"token": token(claims)}})).await;
    assert_eq!(ws.closed().await.0, code);
}

async fn ok(s: &TestServer, method: &str, body: Value) {
    let r = s.api(method, body).await;
    assert!(r.get("error").is_none(), "{method}: {r}");
}

#[tokio::test]
async fn blocked_users_are_disconnected_and_refused_until_unblocked() {
    let s = TestServer::start(json!({})).await;
    let mut bob = s.client("bob").await;
    let mut bob_too = s.client("bob").await;
    let mut alice = s.client("alice").await;
    ok(&s, "block_user", json!({"user": "bob"})).await;
    assert_eq!(bob.closed().await, (3503, "user blocked".into()));
    assert_eq!(bob_too.closed().await.0, 3503);
    refused(&s, json!({"sub": "bob"}), 3503).await;
    // Others stay.
    let r = alice.cmd(json!({"subscribe": {"channel": "chat:x"}})).await;
    assert!(r.get("subscribe").is_some(), "{r}");

    ok(&s, "unblock_user", json!({"user": "bob"})).await;
    let (_ws, r) = connect(&s, json!({"sub": "bob"})).await;
    assert!(r.get("connect").is_some(), "{r}");

    // A block with an end to come blocks now.
    ok(
        &s,
        "block_user",
        json!({"user": "carol", "expire_at": now() + 3600}),
    )
    .await;
    refused(&s, json!({"sub": "carol"}), 3503).await;
}

#[tokio::test]
async fn bad_access_requests_get_clear_errors() {
    let s = TestServer::start(json!({})).await;
    for (method, body, message) in [
        ("block_user", json!({}), "user required"),
        ("unblock_user", json!({"user": ""}), "user required"),
        ("revoke_token", json!({"expire_at": 0}), "uid required"),
        ("invalidate_user_tokens", json!({}), "user required"),
        (
            "block_user",
            json!({"user": "u", "expire_at": 1000}),
            "expire_at is in the past",
        ),
    ] {
        let r = s.api(method, body).await;
        assert_eq!(r["error"]["code"], 107, "{method}: {r}");
        assert!(
            r["error"]["message"].as_str().unwrap().contains(message),
            "{method}: {r}"
        );
    }
    let (status, text) = s
        .api_raw("block_user", r#"{"user": 5}"#, Some(API_KEY))
        .await;
    assert_eq!(status, 400, "{text}");
    assert!(text.contains("user"), "{text}");
}

#[tokio::test]
async fn revoked_token_ids_close_connections_and_end_subscriptions() {
    let s = TestServer::start(json!({})).await;
    let (mut leaked, r) = connect(&s, json!({"sub": "u", "jti": "leaked"})).await;
    assert!(r.get("connect").is_some(), "{r}");
    let (mut fine, _) = connect(&s, json!({"sub": "u", "jti": "fine"})).await;
    // A subscription made with a token of its own, revoked by its id.
    let sub_token = token(json!({"sub": "u", "channel": "secret:x", "jti": "sub-leaked"}));
    let r = fine
        .cmd(json!({"subscribe": {"channel": "secret:x", "token": sub_token}}))
        .await;
    assert!(r.get("subscribe").is_some(), "{r}");

    ok(
        &s,
        "revoke_token",
        json!({"uid": "leaked", "expire_at": now() + 600}),
    )
    .await;
    assert_eq!(leaked.closed().await, (3500, "token revoked".into()));
    refused(&s, json!({"sub": "u", "jti": "leaked"}), 3500).await;

    ok(&s, "revoke_token", json!({"uid": "sub-leaked"})).await;
    let push = fine.push().await;
    assert_eq!(push["channel"], "secret:x", "{push}");
    assert_eq!(push["unsubscribe"]["code"], 2000, "{push}");
    assert_eq!(push["unsubscribe"]["reason"], "token revoked", "{push}");
    // The connection itself stays; the revoked token cannot subscribe again.
    let r = fine
        .cmd(json!({"subscribe": {"channel": "secret:x", "token": sub_token}}))
        .await;
    assert_eq!(r["error"]["code"], 103, "{r}");
    let fresh = token(json!({"sub": "u", "channel": "secret:x", "jti": "new"}));
    let r = fine
        .cmd(json!({"subscribe": {"channel": "secret:x", "token": fresh}}))
        .await;
    assert!(r.get("subscribe").is_some(), "{r}");
}

#[tokio::test]
async fn tokens_issued_before_an_invalidation_stop_counting() {
    let s = TestServer::start(json!({})).await;
    let t = now();
    let (mut old, _) = connect(&s, json!({"sub": "u", "iat": t - 100})).await;
    let (mut other_user, _) = connect(&s, json!({"sub": "v", "iat": t - 100})).await;
    let sub_token = token(json!({"sub": "u", "channel": "secret:x", "iat": t - 100}));
    let (mut new, _) = connect(&s, json!({"sub": "u", "iat": t})).await;
    let r = new
        .cmd(json!({"subscribe": {"channel": "secret:x", "token": sub_token}}))
        .await;
    assert!(r.get("subscribe").is_some(), "{r}");

    ok(
        &s,
        "invalidate_user_tokens",
        json!({"user": "u", "issued_before": t - 50}),
    )
    .await;
    assert_eq!(old.closed().await.0, 3500);
    refused(&s, json!({"sub": "u", "iat": t - 100}), 3500).await;
    let (_ws, r) = connect(&s, json!({"sub": "u", "iat": t - 10})).await;
    assert!(r.get("connect").is_some(), "issued after: {r}");
    // Connection tokens only: the old subscription token still works, and
    // another user's tokens are untouched.
    ok(
        &s,
        "publish",
        json!({"channel": "secret:x", "data": {"n": 1}}),
    )
    .await;
    assert_eq!(new.push().await["pub"]["data"]["n"], 1);
    let r = other_user
        .cmd(json!({"subscribe": {"channel": "chat:y"}}))
        .await;
    assert!(r.get("subscribe").is_some(), "{r}");

    // With a channel: that channel's subscription tokens, not the
    // connection.
    ok(
        &s,
        "invalidate_user_tokens",
        json!({"user": "u", "channel": "secret:x", "issued_before": t - 50}),
    )
    .await;
    let push = new.push().await;
    assert_eq!(push["channel"], "secret:x", "{push}");
    assert_eq!(push["unsubscribe"]["code"], 2000, "{push}");
    let r = new
        .cmd(json!({"subscribe": {"channel": "secret:x", "token": sub_token}}))
        .await;
    assert_eq!(r["error"]["code"], 103, "{r}");
    let r = new.cmd(json!({"subscribe": {"channel": "chat:z"}})).await;
    assert!(r.get("subscribe").is_some(), "connection stays: {r}");
}

/// Blocks and revocations kept in SQLite (`storage_type: database`) hold
/// after a restart; memory-only ones are forgotten.
#[tokio::test]
async fn access_rules_in_the_database_survive_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("access.db");
    let cfg = json!({
        "storage": { "sqlite": { "path": db } },
        "user_block": { "storage_type": "database" },
        "token_revoke": { "storage_type": "database" }
    });
    let s = TestServer::start(cfg.clone()).await;
    ok(&s, "block_user", json!({"user": "bob"})).await;
    ok(
        &s,
        "block_user",
        json!({"user": "gone", "expire_at": now() + 3600}),
    )
    .await;
    ok(&s, "unblock_user", json!({"user": "gone"})).await;
    ok(&s, "revoke_token", json!({"uid": "t1"})).await;
    // user_tokens_invalidate is kept in memory.
    ok(
        &s,
        "invalidate_user_tokens",
        json!({"user": "carol", "issued_before": now()}),
    )
    .await;
    s.stop().await;

    let s = TestServer::start(cfg).await;
    refused(&s, json!({"sub": "bob"}), 3503).await;
    refused(&s, json!({"sub": "dave", "jti": "t1"}), 3500).await;
    for claims in [
        json!({"sub": "gone"}),
        json!({"sub": "carol", "iat": now() - 100}),
    ] {
        let (_ws, r) = connect(&s, claims.clone()).await;
        assert!(r.get("connect").is_some(), "{claims}: {r}");
    }
}
