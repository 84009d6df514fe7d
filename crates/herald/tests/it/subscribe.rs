//! Subscribing and publishing from clients: permissions by namespace,
//! user-limited and private channels, subscription tokens, limits and the
//! error codes of each refusal.

use serde_json::json;

use herald_testkit::*;

#[tokio::test]
async fn subscribe_and_receive_api_and_client_publications() {
    let s = TestServer::start(json!({})).await;
    let mut a = s.client("alice").await;
    let mut b = s.client("bob").await;
    for ws in [&mut a, &mut b] {
        let r = ws.cmd(json!({"subscribe": {"channel": "chat:room"}})).await;
        assert_eq!(r["subscribe"], json!({}), "{r}");
    }
    s.api(
        "publish",
        json!({"channel": "chat:room", "data": {"from": "api"}}),
    )
    .await;
    let p = a.push().await;
    assert_eq!(
        p,
        json!({"channel": "chat:room", "pub": {"data": {"from": "api"}}})
    );
    let r = b
        .cmd(json!({"publish": {"channel": "chat:room", "data": {"text": "hi"}}}))
        .await;
    assert_eq!(r["publish"], json!({}), "{r}");
    let p = a.push().await;
    assert_eq!(p["pub"]["data"], json!({"text": "hi"}));
    assert_eq!(p["pub"]["info"]["user"], "bob");
    assert!(p["pub"]["info"]["client"].is_string());
    s.stop().await;
}

#[tokio::test]
async fn subscribe_errors() {
    let s =
        TestServer::start(json!({"client": {"channel_limit": 2}, "channel": {"max_length": 16}}))
            .await;
    let mut ws = s.client("1").await;
    let err = |r: serde_json::Value| r["error"]["code"].as_u64().unwrap_or(0);
    assert_eq!(
        err(ws.cmd(json!({"subscribe": {"channel": "nope:x"}})).await),
        102
    );
    assert_eq!(
        err(ws.cmd(json!({"subscribe": {"channel": "secret:x"}})).await),
        103
    );
    assert_eq!(
        err(ws.cmd(json!({"subscribe": {"channel": "$chat:x"}})).await),
        103
    );
    assert_eq!(
        err(ws.cmd(json!({"subscribe": {"channel": ""}})).await),
        107
    );
    assert_eq!(
        err(ws
            .cmd(json!({"subscribe": {"channel": "x".repeat(17)}}))
            .await),
        107
    );
    assert_eq!(
        err(ws
            .cmd(json!({"subscribe": {"channel": "x".repeat(16)}}))
            .await),
        0
    );
    assert_eq!(
        err(ws
            .cmd(json!({"subscribe": {"channel": "x".repeat(16)}}))
            .await),
        105
    );
    assert_eq!(err(ws.cmd(json!({"subscribe": {"channel": "a"}})).await), 0);
    assert_eq!(
        err(ws.cmd(json!({"subscribe": {"channel": "b"}})).await),
        106
    );
    let r = ws.cmd(json!({"unsubscribe": {"channel": "a"}})).await;
    assert_eq!(r["unsubscribe"], json!({}));
    assert_eq!(
        err(ws.cmd(json!({"subscribe": {"channel": "b"}})).await),
        0,
        "room again after unsubscribe"
    );
    s.stop().await;
}

#[tokio::test]
async fn user_limited_channels() {
    let s = TestServer::start(json!({})).await;
    let mut bob = s.client("bob").await;
    let r = bob
        .cmd(json!({"subscribe": {"channel": "dm:talk#alice,bob"}}))
        .await;
    assert_eq!(r["subscribe"], json!({}), "{r}");
    let mut eve = s.client("eve").await;
    let r = eve
        .cmd(json!({"subscribe": {"channel": "dm:talk#alice,bob"}}))
        .await;
    assert_eq!(r["error"]["code"], 103, "{r}");
    s.stop().await;
}

#[tokio::test]
async fn private_channel_with_subscription_token() {
    let s = TestServer::start(json!({})).await;
    let mut ws = s.client("u1").await;
    let good = token(
        json!({"sub": "u1", "channel": "secret:plans", "exp": now() + 60, "info": {"role": "admin"}}),
    );
    let r = ws
        .cmd(json!({"subscribe": {"channel": "secret:plans", "token": good}}))
        .await;
    assert_eq!(r["subscribe"]["expires"], true, "{r}");
    let forged =
        herald::auth::sign_hs256(&json!({"sub": "u1", "channel": "secret:w"}), "nope").unwrap();
    let r = ws
        .cmd(json!({"subscribe": {"channel": "secret:w", "token": forged}}))
        .await;
    assert_eq!(r["error"]["code"], 103, "not a valid token: {r}");
    let expired = token(json!({"sub": "u1", "channel": "secret:z", "exp": now() - 1}));
    let r = ws
        .cmd(json!({"subscribe": {"channel": "secret:z", "token": expired}}))
        .await;
    assert_eq!(r["error"]["code"], 109, "{r}");
    let refreshed = token(json!({"sub": "u1", "channel": "secret:plans", "exp": now() + 600}));
    let r = ws
        .cmd(json!({"sub_refresh": {"channel": "secret:plans", "token": refreshed}}))
        .await;
    assert!(r["sub_refresh"]["ttl"].as_u64().unwrap() > 500, "{r}");
    // A valid token made for another channel, user or client is a misuse:
    // the connection is closed with 3500, as Centrifugo does.
    for (claims, channel) in [
        (json!({"sub": "u1", "channel": "secret:other"}), "secret:x"),
        (json!({"sub": "u2", "channel": "secret:y"}), "secret:y"),
        (
            json!({"sub": "u1", "channel": "secret:v", "client": "someone-else"}),
            "secret:v",
        ),
    ] {
        let mut ws = s.client("u1").await;
        ws.send(json!({"subscribe": {"channel": channel, "token": token(claims.clone())}}))
            .await;
        assert_eq!(ws.closed().await.0, 3500, "{claims}");
    }
    s.stop().await;
}

#[tokio::test]
async fn expired_subscription_is_ended_with_2501() {
    let s = TestServer::start(json!({"client": {"expired_sub_close_delay": "0s"}})).await;
    let mut ws = s.client("u1").await;
    let t = token(json!({"sub": "u1", "channel": "secret:s", "exp": now() + 1}));
    ws.cmd(json!({"subscribe": {"channel": "secret:s", "token": t}}))
        .await;
    let p = ws.push().await;
    assert_eq!(
        p,
        json!({"channel": "secret:s", "unsubscribe": {"code": 2501, "reason": "subscription expired"}})
    );
    s.stop().await;
}

#[tokio::test]
async fn publish_permissions_and_errors() {
    let s = TestServer::start(json!({})).await;
    let mut ws = s.client("1").await;
    let code = |r: serde_json::Value| r["error"]["code"].as_u64().unwrap_or(0);
    assert_eq!(
        code(
            ws.cmd(json!({"publish": {"channel": "ro:x", "data": 1}}))
                .await
        ),
        103
    );
    assert_eq!(
        code(
            ws.cmd(json!({"publish": {"channel": "chat:x", "data": 1}}))
                .await
        ),
        103,
        "not subscribed"
    );
    ws.cmd(json!({"subscribe": {"channel": "chat:x"}})).await;
    assert_eq!(
        code(
            ws.cmd(json!({"publish": {"channel": "chat:x", "data": 1}}))
                .await
        ),
        0,
        "subscriber"
    );
    assert_eq!(
        code(
            ws.cmd(json!({"publish": {"channel": "open:x", "data": {"a": [1]}}}))
                .await
        ),
        0
    );
    assert_eq!(
        code(ws.cmd(json!({"publish": {"channel": "open:x"}})).await),
        107,
        "no data"
    );
    assert_eq!(
        code(
            ws.cmd(json!({"publish": {"channel": "nope:x", "data": 1}}))
                .await
        ),
        102
    );
    assert_eq!(
        code(ws.cmd(json!({"presence": {"channel": "chat:x"}})).await),
        108
    );
    assert_eq!(
        code(
            ws.cmd(json!({"history": {"channel": "chat:x", "limit": 10}}))
                .await
        ),
        108
    );
    assert_eq!(
        code(ws.cmd(json!({"rpc": {"method": "m", "data": {}}})).await),
        104
    );
    let r = ws.cmd(json!({"ping": {}})).await;
    assert_eq!(r["ping"], json!({}));
    s.stop().await;
}

#[tokio::test]
async fn commands_batched_in_one_frame_are_answered_in_order() {
    let s = TestServer::start(json!({})).await;
    let mut ws = Ws::open(&s.ws_url()).await;
    let t = token(json!({"sub": "1"}));
    let frame = format!(
        "{}\n{}\n{}",
        json!({"id": 1, "connect": {"token": t}}),
        json!({"id": 2, "subscribe": {"channel": "chat:a"}}),
        json!({"id": 3, "subscribe": {"channel": "nope:b"}})
    );
    ws.send_text(&frame).await;
    let mut ids = Vec::new();
    for _ in 0..3 {
        match ws.read().await {
            Event::Msg(m) => ids.push(m["id"].as_u64().unwrap()),
            Event::Closed(c) => panic!("closed: {c:?}"),
        }
    }
    assert_eq!(ids, vec![1, 2, 3]);
    s.stop().await;
}

#[tokio::test]
async fn sub_refresh_with_expired_token_ends_the_subscription_with_2501() {
    let s = TestServer::start(json!({})).await;
    let mut ws = s.client("u1").await;
    let t = token(json!({"sub": "u1", "channel": "secret:r", "exp": now() + 60}));
    ws.cmd(json!({"subscribe": {"channel": "secret:r", "token": t}}))
        .await;
    let expired = token(json!({"sub": "u1", "channel": "secret:r", "exp": now() - 1}));
    let id = ws
        .send(json!({"sub_refresh": {"channel": "secret:r", "token": expired}}))
        .await;
    let p = ws.push().await;
    assert_eq!(
        p,
        json!({"channel": "secret:r", "unsubscribe": {"code": 2501, "reason": "subscription expired"}})
    );
    assert!(ws.reply(id).await.get("sub_refresh").is_some());
    s.api("publish", json!({"channel": "secret:r", "data": 1}))
        .await;
    let r = ws.cmd(json!({"ping": {}})).await;
    assert!(
        r.get("ping").is_some(),
        "no publication after the subscription ended: {r}"
    );
    s.stop().await;
}
