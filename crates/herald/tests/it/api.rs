//! The HTTP server API: authorisation, malformed requests and every method.

use serde_json::json;

use herald_testkit::*;

#[tokio::test]
async fn api_key_is_required() {
    let s = TestServer::start(json!({})).await;
    let body = r#"{"channel":"x","data":{}}"#;
    assert_eq!(s.api_raw("publish", body, None).await.0, 401);
    assert_eq!(s.api_raw("publish", body, Some("wrong")).await.0, 401);
    assert_eq!(s.api_raw("publish", body, Some(API_KEY)).await.0, 200);
    let resp = reqwest::Client::new()
        .post(s.http("/api/publish"))
        .header("Authorization", format!("apikey {API_KEY}"))
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 200);
    s.stop().await;
}

#[tokio::test]
async fn malformed_requests() {
    let s = TestServer::start(json!({})).await;
    let (status, text) = s.api_raw("publish", "{not json", Some(API_KEY)).await;
    assert_eq!(status, 400);
    assert!(text.contains("malformed"), "{text}");
    assert_eq!(
        s.api_raw("publish", r#"{"channel":5}"#, Some(API_KEY))
            .await
            .0,
        400
    );
    assert_eq!(
        s.api_raw("no_such_method", "{}", Some(API_KEY)).await.0,
        404
    );
    let r = s.api("publish", json!({"channel": "x"})).await;
    assert_eq!(r["error"]["code"], 107, "{r}");
    let r = s
        .api("publish", json!({"channel": "nope:x", "data": 1}))
        .await;
    assert_eq!(r["error"]["code"], 102, "{r}");
    s.stop().await;
}

#[tokio::test]
async fn broadcast_and_batch() {
    let s = TestServer::start(json!({})).await;
    let mut ws = s.client("1").await;
    ws.cmd(json!({"subscribe": {"channel": "a"}})).await;
    ws.cmd(json!({"subscribe": {"channel": "b"}})).await;
    let r = s
        .api(
            "broadcast",
            json!({"channels": ["a", "b", "nope:c"], "data": {"x": 1}}),
        )
        .await;
    let responses = r["result"]["responses"].as_array().unwrap();
    assert_eq!(responses[0], json!({"result": {}}));
    assert_eq!(responses[2]["error"]["code"], 102);
    let mut channels = vec![
        ws.push().await["channel"].clone(),
        ws.push().await["channel"].clone(),
    ];
    channels.sort_by_key(|c| c.to_string());
    assert_eq!(channels, vec![json!("a"), json!("b")]);
    let r = s
        .api(
            "batch",
            json!({"commands": [
                {"publish": {"channel": "a", "data": 1}},
                {"publish": {"channel": "a", "data": 2}},
                {"publish": {"channel": "a"}}
            ]}),
        )
        .await;
    let replies = r["replies"].as_array().unwrap();
    assert_eq!(replies[0], json!({"publish": {}}));
    assert_eq!(replies[2]["error"]["code"], 107);
    assert_eq!(ws.push().await["pub"]["data"], 1);
    assert_eq!(ws.push().await["pub"]["data"], 2);
    s.stop().await;
}

#[tokio::test]
async fn server_side_subscribe_unsubscribe_and_message() {
    let s = TestServer::start(json!({})).await;
    let mut ws = s.client("u").await;
    s.api(
        "subscribe",
        json!({"user": "u", "channel": "news", "data": {"welcome": true}}),
    )
    .await;
    let p = ws.push().await;
    assert_eq!(
        p,
        json!({"channel": "news", "subscribe": {"data": {"welcome": true}}})
    );
    s.api("publish", json!({"channel": "news", "data": "hello"}))
        .await;
    assert_eq!(ws.push().await["pub"]["data"], "hello");
    s.api("unsubscribe", json!({"user": "u", "channel": "news"}))
        .await;
    let p = ws.push().await;
    assert_eq!(
        p,
        json!({"channel": "news", "unsubscribe": {"code": 2000, "reason": "server unsubscribe"}})
    );
    s.api("publish", json!({"channel": "news", "data": "gone"}))
        .await;
    let r = ws.cmd(json!({"ping": {}})).await;
    assert!(
        r.get("ping").is_some(),
        "no publication after unsubscribe, got {r}"
    );
    s.stop().await;
}

#[tokio::test]
async fn disconnect_by_user_and_client() {
    let s = TestServer::start(json!({})).await;
    let mut a = s.client("u").await;
    s.api("disconnect", json!({"user": "u"})).await;
    assert_eq!(a.closed().await, (3503, "force disconnect".into()));
    let mut b = s.client("u").await;
    let mut keep = s.client("u").await;
    let client_id = {
        let r = keep.cmd(json!({"ping": {}})).await;
        assert!(r.get("ping").is_some());
        s.node
            .hub
            .user_clients("u")
            .into_iter()
            .map(|c| c.client_id().to_string())
            .collect::<Vec<_>>()
    };
    assert_eq!(client_id.len(), 2);
    s.api("disconnect", json!({"user": "u", "whitelist": [client_id[0].clone()], "disconnect": {"code": 4000, "reason": "custom"}})).await;
    let closed_b_or_keep = tokio::select! {
        c = b.closed() => c,
        c = keep.closed() => c,
    };
    assert_eq!(closed_b_or_keep, (4000, "custom".into()));
    wait_until("one connection left", || s.node.hub.num_clients() == 1).await;
    let r = s
        .api(
            "disconnect",
            json!({"user": "u", "disconnect": {"code": 1000, "reason": "x"}}),
        )
        .await;
    assert_eq!(r["error"]["code"], 107, "{r}");
    s.stop().await;
}

#[tokio::test]
async fn refresh_expired_disconnects() {
    let s = TestServer::start(json!({})).await;
    let mut ws = s.client("u").await;
    s.api("refresh", json!({"user": "u", "expired": true}))
        .await;
    assert_eq!(ws.closed().await.0, 3005);
    s.stop().await;
}

#[tokio::test]
async fn channels_info_and_health() {
    let s = TestServer::start(json!({})).await;
    let mut a = s.client("a").await;
    let mut b = s.client("b").await;
    a.cmd(json!({"subscribe": {"channel": "chat:1"}})).await;
    b.cmd(json!({"subscribe": {"channel": "chat:1"}})).await;
    b.cmd(json!({"subscribe": {"channel": "news"}})).await;
    let r = s.api("channels", json!({})).await;
    assert_eq!(r["result"]["channels"]["chat:1"]["num_clients"], 2);
    let r = s.api("channels", json!({"pattern": "chat:*"})).await;
    assert_eq!(r["result"]["channels"].as_object().unwrap().len(), 1, "{r}");
    let r = s.api("info", json!({})).await;
    let node = &r["result"]["nodes"][0];
    assert_eq!(
        (
            node["num_clients"].as_u64(),
            node["num_users"].as_u64(),
            node["num_subs"].as_u64()
        ),
        (Some(2), Some(2), Some(3))
    );
    let resp = reqwest::get(s.http("/health")).await.unwrap();
    assert_eq!(resp.status().as_u16(), 200);
    s.stop().await;
}

#[tokio::test]
async fn server_side_subscribe_respects_the_channel_limit() {
    let s = TestServer::start(json!({"client": {"channel_limit": 1}})).await;
    let mut ws = s.client("u").await;
    ws.cmd(json!({"subscribe": {"channel": "a"}})).await;
    s.api("subscribe", json!({"user": "u", "channel": "b"}))
        .await;
    s.api("publish", json!({"channel": "b", "data": 1})).await;
    let r = ws.cmd(json!({"ping": {}})).await;
    assert!(
        r.get("ping").is_some(),
        "no subscribe push or publication from b: {r}"
    );
    assert_eq!(s.node.hub.num_subscriptions(), 1);
    s.stop().await;
}
