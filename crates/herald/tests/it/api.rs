//! The HTTP server API: authorisation, malformed requests and every method.

use serde_json::{json, Value};

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
    // A field of the wrong type is named.
    for (body, field) in [
        (r#"{"channel":5}"#, "channel"),
        (r#"{"channel":"x","data":1,"tags":{"a":1}}"#, "tags.a"),
        (
            r#"{"channel":"x","data":1,"skip_history":"yes"}"#,
            "skip_history",
        ),
    ] {
        let (status, text) = s.api_raw("publish", body, Some(API_KEY)).await;
        assert_eq!(status, 400, "{body}: {text}");
        assert!(
            text.contains(&format!("{field}: invalid type")),
            "{body}: {text}"
        );
    }
    // Unknown fields are ignored.
    let r = s
        .api(
            "publish",
            json!({"channel": "x", "data": 1, "no_such_field": [1]}),
        )
        .await;
    assert_eq!(r["result"], json!({}), "{r}");
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
    let body: Value = resp.json().await.unwrap();
    assert_eq!(
        body,
        json!({"status": "ok", "checks": {}}),
        "nothing to depend on"
    );
    let resp = reqwest::get(s.http("/health/live")).await.unwrap();
    assert_eq!(resp.status().as_u16(), 200);
    s.stop().await;

    // Durable storage is a dependency.
    let s = TestServer::start(json!({"channel": {"namespaces": [
        {"name": "log", "history_storage": "durable", "history_size": 10, "history_ttl": "60s"}
    ]}}))
    .await;
    let body: Value = reqwest::get(s.http("/health"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        body,
        json!({"status": "ok", "checks": {"storage": {"status": "ok", "type": "sqlite"}}})
    );
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

/// The data of the next publication pushed to `ws`, and its offset (None
/// when it has none).
async fn next_pub(ws: &mut Ws) -> (Value, Option<u64>) {
    let p = ws.push().await;
    (p["pub"]["data"].clone(), p["pub"]["offset"].as_u64())
}

#[tokio::test]
async fn skip_history_delivers_without_storing() {
    let s = TestServer::start(json!({})).await;
    let mut ws = s.client("u").await;
    ws.cmd(json!({"subscribe": {"channel": "hist:skip"}})).await;
    let r = s
        .api(
            "publish",
            json!({"channel": "hist:skip", "data": {"n": 1}, "skip_history": true}),
        )
        .await;
    assert_eq!(r["result"], json!({}), "no position: {r}");
    assert_eq!(next_pub(&mut ws).await, (json!({"n": 1}), None));
    let r = s
        .api("publish", json!({"channel": "hist:skip", "data": {"n": 2}}))
        .await;
    assert_eq!(
        r["result"]["offset"], 1,
        "the skipped one took no offset: {r}"
    );
    assert_eq!(next_pub(&mut ws).await, (json!({"n": 2}), Some(1)));
    let r = s
        .api(
            "broadcast",
            json!({"channels": ["hist:skip"], "data": {"n": 3}, "skip_history": true}),
        )
        .await;
    assert_eq!(r["result"]["responses"][0]["result"], json!({}), "{r}");
    assert_eq!(next_pub(&mut ws).await, (json!({"n": 3}), None));
    let r = s
        .api("history", json!({"channel": "hist:skip", "limit": -1}))
        .await;
    let pubs = r["result"]["publications"].as_array().unwrap();
    assert_eq!(pubs.len(), 1, "only the one not skipped: {r}");
    assert_eq!(pubs[0]["data"], json!({"n": 2}));
    s.stop().await;
}

#[tokio::test]
async fn an_idempotency_key_publishes_once_per_channel() {
    let s = TestServer::start(json!({})).await;
    let mut ws = s.client("u").await;
    for channel in ["hist:once", "chat:once"] {
        ws.cmd(json!({"subscribe": {"channel": channel}})).await;
    }
    let publish = |channel: &str, n: u64, key: &str| json!({"channel": channel, "data": {"n": n}, "idempotency_key": key});
    // With history: the retry gets the first one's offset and epoch.
    let first = s.api("publish", publish("hist:once", 1, "k1")).await;
    assert_eq!(first["result"]["offset"], 1, "{first}");
    let retry = s.api("publish", publish("hist:once", 2, "k1")).await;
    assert_eq!(retry["result"], first["result"]);
    // Without history: published once, an empty result every time.
    for n in [3, 4] {
        let r = s.api("publish", publish("chat:once", n, "k1")).await;
        assert_eq!(r["result"], json!({}), "{r}");
    }
    // Broadcast: the key holds per channel, with each channel's result.
    let body =
        json!({"channels": ["hist:once", "chat:once"], "data": {"n": 5}, "idempotency_key": "k2"});
    let first = s.api("broadcast", body.clone()).await;
    let retry = s.api("broadcast", body).await;
    assert_eq!(
        first["result"]["responses"][0]["result"]["offset"], 2,
        "{first}"
    );
    assert_eq!(retry["result"], first["result"]);
    // An empty key is no key.
    for n in [6, 7] {
        s.api("publish", publish("chat:once", n, "")).await;
    }
    // The subscriber got each publication once, and nothing else.
    let mut got = Vec::new();
    for _ in 0..6 {
        let p = ws.push().await;
        got.push((
            p["pub"]["data"]["n"].as_u64().unwrap(),
            p["channel"].clone(),
        ));
    }
    got.sort_by_key(|(n, _)| *n);
    let ns: Vec<u64> = got.iter().map(|(n, _)| *n).collect();
    assert_eq!(ns, vec![1, 3, 5, 5, 6, 7]);
    s.api(
        "publish",
        json!({"channel": "chat:once", "data": {"end": true}}),
    )
    .await;
    assert_eq!(ws.push().await["pub"]["data"], json!({"end": true}));
    s.stop().await;
}

/// Targets by session match only connections with that session; WebSocket
/// connections have none, so nothing is done to them.
#[tokio::test]
async fn a_session_target_leaves_websocket_connections_alone() {
    let s = TestServer::start(json!({})).await;
    let mut ws = s.client("u").await;
    s.api(
        "disconnect",
        json!({"user": "u", "session": "no-such-session"}),
    )
    .await;
    s.api(
        "subscribe",
        json!({"user": "u", "channel": "news", "session": "no-such-session"}),
    )
    .await;
    // Still connected and not subscribed: the next push is this one.
    s.api("subscribe", json!({"user": "u", "channel": "other"}))
        .await;
    assert_eq!(ws.push().await["channel"], "other");
    s.stop().await;
}

#[tokio::test]
async fn batch_runs_in_parallel_and_keeps_the_order_of_replies() {
    let s = TestServer::start(json!({})).await;
    let commands: Vec<Value> = (1..=20)
        .map(|n| json!({"publish": {"channel": "hist:batch", "data": {"n": n}}}))
        .chain([json!({"publish": {"channel": "nope:x", "data": 1}})])
        .collect();
    let r = s
        .api("batch", json!({"commands": commands, "parallel": true}))
        .await;
    let replies = r["replies"].as_array().expect("replies");
    assert_eq!(replies.len(), 21, "{r}");
    let mut offsets: Vec<u64> = replies[..20]
        .iter()
        .map(|r| r["publish"]["offset"].as_u64().expect("an offset"))
        .collect();
    offsets.sort_unstable();
    assert_eq!(offsets, (1..=20).collect::<Vec<_>>());
    assert_eq!(replies[20]["error"]["code"], 102, "{r}");
    s.stop().await;
}

/// In the transport error mode (a request header, or `http_api.error_mode`)
/// errors are HTTP statuses with `{"code","message"}`, as Centrifugo maps
/// them.
#[tokio::test]
async fn errors_as_http_statuses_in_the_transport_error_mode() {
    let s = TestServer::start(json!({})).await;
    let call = |body: Value, header: bool| {
        let mut request = reqwest::Client::new()
            .post(s.http("/api/publish"))
            .header("X-API-Key", API_KEY)
            .body(body.to_string());
        if header {
            request = request.header("X-Centrifugo-Error-Mode", "transport");
        }
        async move {
            let response = request.send().await.unwrap();
            let status = response.status().as_u16();
            (status, response.json::<Value>().await.unwrap())
        }
    };
    let unknown = json!({"channel": "nope:x", "data": 1});
    let (status, body) = call(unknown.clone(), true).await;
    assert_eq!(status, 404, "{body}");
    assert_eq!(body["code"], 102, "{body}");
    let (status, body) = call(json!({"channel": "x"}), true).await;
    assert_eq!((status, body["code"].clone()), (400, json!(107)), "{body}");
    let (status, body) = call(json!({"channel": "x", "data": 1}), true).await;
    assert_eq!((status, body), (200, json!({"result": {}})));
    // Without the header: HTTP 200 with the error in the body.
    let (status, body) = call(unknown.clone(), false).await;
    assert_eq!((status, body["error"]["code"].clone()), (200, json!(102)));
    s.stop().await;

    let s = TestServer::start(json!({"http_api": {"error_mode": "transport"}})).await;
    let (status, body) = s
        .api_raw("publish", &unknown.to_string(), Some(API_KEY))
        .await;
    assert_eq!(status, 404, "{body}");
    s.stop().await;
}

/// A publication whose version is not above the channel stream's last is
/// not published; the stream's position comes back. `delta` is accepted
/// (no namespace offers deltas, so subscribers get whole publications).
#[tokio::test]
async fn stale_versions_are_not_published() {
    let s = TestServer::start(json!({})).await;
    let mut ws = s.client("u").await;
    ws.cmd(json!({"subscribe": {"channel": "hist:ver"}})).await;
    let publish = |n: u64, version: u64, epoch: &str| json!({"channel": "hist:ver", "data": {"n": n}, "version": version, "version_epoch": epoch, "delta": true});
    let offsets = [
        (publish(1, 2, ""), 1),
        (publish(2, 2, ""), 1),
        (publish(3, 1, ""), 1),
        (publish(4, 3, ""), 2),
        (publish(5, 1, "b"), 3),
    ];
    for (body, offset) in offsets {
        let r = s.api("publish", body.clone()).await;
        assert_eq!(r["result"]["offset"], offset, "{body}: {r}");
    }
    let r = s
        .api(
            "broadcast",
            json!({"channels": ["hist:ver"], "data": {"n": 6}, "version": 1, "version_epoch": "b"}),
        )
        .await;
    assert_eq!(r["result"]["responses"][0]["result"]["offset"], 3, "{r}");
    for n in [1, 4, 5] {
        assert_eq!(ws.push().await["pub"]["data"]["n"], n);
    }
    s.api("publish", json!({"channel": "hist:ver", "data": {"n": 7}}))
        .await;
    assert_eq!(
        ws.push().await["pub"]["data"]["n"],
        7,
        "nothing stale was delivered"
    );
    s.stop().await;
}

#[tokio::test]
async fn publish_tags_and_b64data_reach_subscribers() {
    use base64::Engine as _;
    let s = TestServer::start(json!({})).await;
    let mut ws = s.client("u").await;
    ws.cmd(json!({"subscribe": {"channel": "news"}})).await;
    let b64 = base64::engine::general_purpose::STANDARD.encode(r#"{"from":"b64"}"#);
    s.api(
        "publish",
        json!({"channel": "news", "b64data": b64, "tags": {"kind": "note"}}),
    )
    .await;
    let p = ws.push().await;
    assert_eq!(p["pub"]["data"], json!({"from": "b64"}), "{p}");
    assert_eq!(p["pub"]["tags"], json!({"kind": "note"}), "{p}");
    s.stop().await;
}

/// Refresh with `expire_at` and `info`: the connection's expiry moves (the
/// client is told its new TTL) and its info goes with what it publishes.
#[tokio::test]
async fn refresh_moves_expiry_and_replaces_info() {
    let s = TestServer::start(json!({})).await;
    let mut ws = s.client("u").await;
    ws.cmd(json!({"subscribe": {"channel": "chat:r"}})).await;
    let expire_at = now() + 600;
    let r = s
        .api(
            "refresh",
            json!({"user": "u", "expire_at": expire_at, "info": {"name": "new"}}),
        )
        .await;
    assert!(r.get("error").is_none(), "{r}");
    let p = ws.push().await;
    let ttl = p["refresh"]["ttl"].as_u64().expect("a ttl");
    assert!((598..=600).contains(&ttl), "{p}");
    assert_eq!(p["refresh"]["expires"], true, "{p}");
    let r = ws
        .cmd(json!({"publish": {"channel": "chat:r", "data": 1}}))
        .await;
    assert!(r.get("publish").is_some(), "{r}");
    let p = ws.push().await;
    assert_eq!(p["pub"]["info"]["conn_info"], json!({"name": "new"}), "{p}");
    // Past expiry without `expired` is refused.
    let r = s
        .api("refresh", json!({"user": "u", "expire_at": now() - 10}))
        .await;
    assert_eq!(r["error"]["code"], 107, "{r}");
    s.stop().await;
}

/// `swagger.enabled` serves the OpenAPI document (every method, every
/// `$ref` leading somewhere) and Swagger UI; nothing without it. The SDK
/// suite validates the document with an OpenAPI validator.
#[tokio::test]
async fn openapi_document_and_swagger_ui() {
    let s = TestServer::start(json!({"swagger": {"enabled": true}})).await;
    let doc: Value = reqwest::get(s.http("/swagger/openapi.json"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(doc["openapi"].as_str().unwrap().starts_with("3."), "{doc}");
    for method in [
        "publish",
        "broadcast",
        "subscribe",
        "unsubscribe",
        "disconnect",
        "refresh",
        "presence",
        "presence_stats",
        "history",
        "history_remove",
        "channels",
        "info",
        "batch",
    ] {
        assert!(
            doc["paths"][format!("/api/{method}")]["post"].is_object(),
            "{method}"
        );
    }
    let text = doc.to_string();
    for target in text.split("\"#/components/schemas/").skip(1) {
        let name = &target[..target.find('"').unwrap()];
        assert!(
            doc["components"]["schemas"][name].is_object(),
            "$ref to {name}"
        );
    }
    let ui = reqwest::get(s.http("/swagger/")).await.unwrap();
    assert_eq!(ui.status(), 200);
    assert!(ui.text().await.unwrap().contains("swagger-ui"));
    s.stop().await;

    let s = TestServer::start(json!({})).await;
    let r = reqwest::get(s.http("/swagger/openapi.json")).await.unwrap();
    assert_eq!(r.status(), 404);
    s.stop().await;
}

#[tokio::test]
async fn channel_errors_name_the_setting_at_fault() {
    let s = TestServer::start(json!({})).await;
    let cases = [
        (
            "publish",
            json!({"channel": "nope:x", "data": {}}),
            102,
            "no namespace \"nope\" in channel.namespaces",
        ),
        ("publish", json!({"data": {}}), 107, "channel is required"),
        (
            "history",
            json!({"channel": "chat:x"}),
            108,
            "keeps no history",
        ),
        (
            "presence",
            json!({"channel": "chat:x"}),
            108,
            "presence is off",
        ),
        (
            "history",
            json!({"channel": "nope:x"}),
            102,
            "channel.namespaces",
        ),
    ];
    for (method, body, code, words) in cases {
        let r = s.api(method, body.clone()).await;
        assert_eq!(r["error"]["code"], code, "{method} {body}: {r}");
        let message = r["error"]["message"].as_str().unwrap();
        assert!(message.contains(words), "{method} {body}: {message}");
    }
    s.stop().await;
}
