//! `serve --dev`: the demo page, anonymous clients that may subscribe and
//! publish anywhere, and the server API without a key — and none of it
//! without the flag.

use serde_json::json;

use herald_testkit::*;

async fn get(url: &str) -> (u16, Option<String>, String) {
    let resp = tokio::time::timeout(WAIT, reqwest::get(url))
        .await
        .expect("GET in time")
        .expect("GET reachable");
    let status = resp.status().as_u16();
    let content_type = resp
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    (status, content_type, resp.text().await.unwrap())
}

#[tokio::test]
async fn demo_page_and_client_script_are_served() {
    let s = TestServer::start_dev().await;
    let (status, ct, body) = get(&s.http("/")).await;
    assert_eq!(status, 200);
    assert!(ct.unwrap_or_default().starts_with("text/html"));
    assert!(body.contains("<html") || body.contains("<!doctype") || body.contains("<!DOCTYPE"));
    assert!(body.contains("herald-client.js"), "{body}");
    let (status, ct, body) = get(&s.http("/herald-client.js")).await;
    assert_eq!(status, 200);
    assert!(ct.unwrap_or_default().contains("javascript"));
    assert!(!body.is_empty());
    s.stop().await;
}

#[tokio::test]
async fn anonymous_clients_subscribe_and_publish_anywhere() {
    let s = TestServer::start_dev().await;
    let mut a = Ws::open(&s.ws_url()).await;
    let mut b = Ws::open(&s.ws_url()).await;
    for ws in [&mut a, &mut b] {
        let r = ws.cmd(json!({"connect": {}})).await;
        assert!(r["connect"]["client"].is_string(), "{r}");
    }
    // `secret` is a namespace that grants clients nothing outside dev mode.
    for channel in ["anything", "chat:lobby", "secret:x"] {
        for ws in [&mut a, &mut b] {
            let r = ws.cmd(json!({"subscribe": {"channel": channel}})).await;
            assert_eq!(r["subscribe"], json!({}), "{channel}: {r}");
        }
        let r = a
            .cmd(json!({"publish": {"channel": channel, "data": {"in": channel}}}))
            .await;
        assert_eq!(r["publish"], json!({}), "{channel}: {r}");
        for ws in [&mut a, &mut b] {
            let p = ws.push().await;
            assert_eq!(p["channel"], channel);
            assert_eq!(p["pub"]["data"], json!({"in": channel}));
        }
    }
    // Channels still need a declared namespace, as in Centrifugo.
    let r = a
        .cmd(json!({"subscribe": {"channel": "undeclared:x"}}))
        .await;
    assert_eq!(r["error"]["code"], 102, "{r}");
    // Publishing without subscribing works too.
    let mut c = Ws::open(&s.ws_url()).await;
    c.cmd(json!({"connect": {}})).await;
    let r = c
        .cmd(json!({"publish": {"channel": "anything", "data": {"from": "c"}}}))
        .await;
    assert_eq!(r["publish"], json!({}), "{r}");
    assert_eq!(b.push().await["pub"]["data"], json!({"from": "c"}));
    s.stop().await;
}

#[tokio::test]
async fn server_api_needs_no_key() {
    let s = TestServer::start_dev().await;
    let mut ws = Ws::open(&s.ws_url()).await;
    ws.cmd(json!({"connect": {}})).await;
    ws.cmd(json!({"subscribe": {"channel": "chat:lobby"}}))
        .await;
    let (status, text) = s
        .api_raw(
            "publish",
            r#"{"channel":"chat:lobby","data":{"from":"api"}}"#,
            None,
        )
        .await;
    assert_eq!(status, 200, "{text}");
    assert!(text.contains("result"), "{text}");
    assert_eq!(ws.push().await["pub"]["data"], json!({"from": "api"}));
    let (status, text) = s.api_raw("info", "{}", None).await;
    assert_eq!(status, 200, "{text}");
    s.stop().await;
}

#[tokio::test]
async fn without_dev_there_is_no_page_and_no_free_access() {
    let s = TestServer::start(json!({})).await;
    assert_eq!(get(&s.http("/")).await.0, 404);
    assert_eq!(get(&s.http("/herald-client.js")).await.0, 404);
    let mut ws = Ws::open(&s.ws_url()).await;
    let r = ws.cmd(json!({"connect": {}})).await;
    assert_eq!(r["error"]["code"], 101, "anonymous connect refused: {r}");
    let (status, _) = s
        .api_raw("publish", r#"{"channel":"x","data":{}}"#, None)
        .await;
    assert_eq!(status, 401);
    s.stop().await;
}
