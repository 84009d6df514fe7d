//! The Pusher protocol over raw sockets and signed HTTP requests: the
//! frames, the signatures, and bad input of every kind answered with the
//! protocol's errors (the SDK suite drives it with pusher-js, the `pusher`
//! server SDK and Laravel Echo).

use serde_json::{json, Value};

use herald_testkit::*;

mod blocked;
mod counts;
mod watchlist;
mod webhooks;

const KEY: &str = "app-key";
const SECRET: &str = "app-secret";

fn config(app: Value) -> Value {
    let mut a = json!({"id": "7", "key": KEY, "secret": SECRET, "namespace": "app",
                       "enable_client_messages": true});
    merge(&mut a, app);
    json!({
        "channel": {"namespaces": [
            {"name": "app", "history_size": 10, "history_ttl": "300s"},
            {"name": "other"}
        ]},
        "pusher": {"apps": [a]}
    })
}

async fn socket(s: &TestServer, key: &str, query: &str) -> Ws {
    Ws::open(&format!("ws://{}/app/{key}{query}", s.addr)).await
}

async fn message(ws: &mut Ws) -> (String, Option<String>, Value) {
    pusher_message(ws).await
}

async fn established(s: &TestServer) -> (Ws, String) {
    let mut ws = socket(s, KEY, "?protocol=7&client=js&version=8.6.0").await;
    let (event, _, data) = message(&mut ws).await;
    assert_eq!(event, "pusher:connection_established");
    let id = data["socket_id"].as_str().unwrap().to_string();
    assert!(
        id.split_once('.')
            .is_some_and(|(a, b)| a.parse::<u64>().is_ok() && b.parse::<u64>().is_ok()),
        "{id}"
    );
    assert_eq!(data["activity_timeout"], 120);
    (ws, id)
}

async fn send(ws: &mut Ws, m: Value) {
    ws.send_text(&m.to_string()).await;
}

/// Nothing comes before the answer to a ping.
async fn nothing_more(ws: &mut Ws) {
    send(ws, json!({"event": "pusher:ping", "data": {}})).await;
    assert_eq!(message(ws).await.0, "pusher:pong");
}

/// Subscribes `ws` to public channel `channel` and waits for the answer.
async fn subscribe_public(ws: &mut Ws, channel: &str) {
    let m = json!({"event": "pusher:subscribe", "data": {"channel": channel}});
    send(ws, m).await;
    assert_eq!(
        message(ws).await.0,
        "pusher_internal:subscription_succeeded"
    );
}

fn auth(message: &str) -> String {
    pusher_auth(KEY, SECRET, message)
}

#[tokio::test]
async fn frames_of_a_public_and_a_presence_channel() {
    let s = TestServer::start(config(json!({}))).await;
    let (mut ws, id) = established(&s).await;
    send(
        &mut ws,
        json!({"event": "pusher:subscribe", "data": {"channel": "news"}}),
    )
    .await;
    let (event, channel, _) = message(&mut ws).await;
    assert_eq!(
        (event.as_str(), channel.as_deref()),
        ("pusher_internal:subscription_succeeded", Some("news"))
    );

    // A publication of Herald's server API in the event shape.
    s.api(
        "publish",
        json!({"channel": "app:news", "data": {"event": "e", "data": {"a": 1}}}),
    )
    .await;
    let (event, channel, data) = message(&mut ws).await;
    assert_eq!((event.as_str(), channel.as_deref()), ("e", Some("news")));
    assert_eq!(data, json!({"a": 1}));

    // A presence channel, signed with its channel_data.
    let channel_data = json!({"user_id": 5, "user_info": {"name": "Five"}}).to_string();
    let signature = auth(&format!("{id}:presence-room:{channel_data}"));
    send(
        &mut ws,
        json!({"event": "pusher:subscribe", "data": {
        "channel": "presence-room", "auth": signature, "channel_data": channel_data}}),
    )
    .await;
    let (event, _, data) = message(&mut ws).await;
    assert_eq!(event, "pusher_internal:subscription_succeeded");
    assert_eq!(
        data,
        json!({"presence": {"ids": ["5"], "hash": {"5": {"name": "Five"}}, "count": 1}})
    );

    // Ping and pong.
    send(&mut ws, json!({"event": "pusher:ping", "data": {}})).await;
    assert_eq!(message(&mut ws).await.0, "pusher:pong");
    s.stop().await;
}

/// Subscribes to `channel` (with `extra` data), which must be refused;
/// the refusal's status.
async fn refused(ws: &mut Ws, channel: Value, extra: Value) -> u64 {
    let mut data = json!({ "channel": channel });
    merge(&mut data, extra);
    send(ws, json!({"event": "pusher:subscribe", "data": data})).await;
    let (event, _, data) = message(ws).await;
    assert_eq!(event, "pusher:subscription_error");
    data["status"].as_u64().unwrap()
}

#[tokio::test]
async fn bad_input_gets_the_protocols_errors() {
    let s = TestServer::start(config(json!({}))).await;
    let (mut ws, id) = established(&s).await;
    // Not JSON, not an object with an event, binary: errors, still open.
    for bad in ["not json", "[1,2]", "{\"data\":{}}"] {
        ws.send_text(bad).await;
        let (event, _, data) = message(&mut ws).await;
        assert_eq!(event, "pusher:error", "{bad}");
        assert!(data["message"].is_string(), "{data}");
    }
    // Unknown events are ignored.
    send(
        &mut ws,
        json!({"event": "pusher:from_the_future", "data": {}}),
    )
    .await;
    send(&mut ws, json!({"event": "pusher:ping", "data": {}})).await;
    assert_eq!(message(&mut ws).await.0, "pusher:pong");

    assert_eq!(refused(&mut ws, json!("a:b"), json!({})).await, 400);
    assert_eq!(
        refused(&mut ws, json!("x".repeat(165)), json!({})).await,
        400
    );
    assert_eq!(refused(&mut ws, json!("private-x"), json!({})).await, 401);
    let other_socket = auth("1.1:private-x");
    assert_eq!(
        refused(&mut ws, json!("private-x"), json!({"auth": other_socket})).await,
        401
    );
    // A user's own channel, before signing in as that user.
    assert_eq!(
        refused(&mut ws, json!("#server-to-user-u1"), json!({})).await,
        403
    );
    // A presence subscription without channel_data.
    let signature = auth(&format!("{id}:presence-x"));
    assert_eq!(
        refused(&mut ws, json!("presence-x"), json!({"auth": signature})).await,
        400
    );
    // A client event on a channel it is not subscribed to.
    send(
        &mut ws,
        json!({"event": "client-x", "channel": "private-y", "data": {}}),
    )
    .await;
    assert_eq!(message(&mut ws).await.0, "pusher:error");
    // A sign-in with a bad signature ends the socket with 4009.
    send(
        &mut ws,
        json!({"event": "pusher:signin", "data": {"auth": "k:bad", "user_data": "{\"id\":\"1\"}"}}),
    )
    .await;
    assert_eq!(message(&mut ws).await.0, "pusher:error");
    assert_eq!(ws.closed().await.0, 4009);
    s.stop().await;
}

#[tokio::test]
async fn unknown_keys_old_protocols_and_full_apps_are_closed_with_their_codes() {
    let s = TestServer::start(config(json!({"max_connections": 1}))).await;
    let mut unknown = socket(&s, "nope", "?protocol=7").await;
    let (event, _, data) = message(&mut unknown).await;
    assert_eq!(
        (event.as_str(), data["code"].as_u64()),
        ("pusher:error", Some(4001))
    );
    assert_eq!(unknown.closed().await.0, 4001);
    let mut old = socket(&s, KEY, "?protocol=3").await;
    assert_eq!(message(&mut old).await.0, "pusher:error");
    assert_eq!(old.closed().await.0, 4007);
    let mut none = socket(&s, KEY, "").await;
    assert_eq!(message(&mut none).await.0, "pusher:error");
    assert_eq!(none.closed().await.0, 4008);
    let (_first, _) = established(&s).await;
    let mut second = socket(&s, KEY, "?protocol=7").await;
    assert_eq!(message(&mut second).await.0, "pusher:error");
    assert_eq!(second.closed().await.0, 4100);
    s.stop().await;
}

#[tokio::test]
async fn a_silent_socket_is_pinged_then_closed() {
    let s = TestServer::start(config(json!({"activity_timeout": "1s"}))).await;
    let mut ws = socket(&s, KEY, "?protocol=7").await;
    assert_eq!(message(&mut ws).await.0, "pusher:connection_established");
    assert_eq!(message(&mut ws).await.0, "pusher:ping");
    assert_eq!(ws.closed().await.0, 4201);
    s.stop().await;
}

/// A request to the HTTP API signed with `secret` at `timestamp`.
fn signed(
    s: &TestServer,
    method: &str,
    path: &str,
    body: &str,
    secret: &str,
    timestamp: i64,
) -> reqwest::RequestBuilder {
    let url = s.http(&pusher_signed(method, path, body, KEY, secret, timestamp));
    let client = reqwest::Client::new();
    let r = if method == "POST" {
        client.post(url)
    } else {
        client.get(url)
    };
    r.header("content-type", "application/json")
        .body(body.to_string())
}

async fn status(r: reqwest::RequestBuilder) -> (u16, String) {
    let r = r.send().await.unwrap();
    (r.status().as_u16(), r.text().await.unwrap())
}

#[tokio::test]
async fn the_http_api_takes_only_requests_signed_now() {
    let s = TestServer::start(config(json!({"max_event_size": 100}))).await;
    let now = now();
    let event = json!({"name": "e", "channel": "news", "data": "{\"n\":1}"}).to_string();
    let (code, body) = status(signed(&s, "POST", "/apps/7/events", &event, SECRET, now)).await;
    assert_eq!((code, body.as_str()), (200, "{}"));
    // Replayed ten minutes and a second later, or signed ahead of time.
    for at in [now - 601, now + 601] {
        let (code, body) = status(signed(&s, "POST", "/apps/7/events", &event, SECRET, at)).await;
        assert_eq!(code, 401, "{body}");
    }
    // Another secret, another body than signed, another app.
    assert_eq!(
        status(signed(&s, "POST", "/apps/7/events", &event, "x", now))
            .await
            .0,
        401
    );
    let tampered =
        signed(&s, "POST", "/apps/7/events", &event, SECRET, now).body(event.replace('1', "2"));
    assert_eq!(status(tampered).await.0, 401);
    assert_eq!(
        status(signed(&s, "POST", "/apps/8/events", &event, SECRET, now))
            .await
            .0,
        404
    );
    // Bad events: malformed, too big, too many channels, no name.
    let too_many: Vec<String> = (0..101).map(|i| format!("c{i}")).collect();
    for (bad, expected) in [
        ("{".to_string(), 400),
        (
            json!({"name": "e", "channel": "news", "data": "x".repeat(101)}).to_string(),
            413,
        ),
        (
            json!({"name": "e", "channels": too_many, "data": "{}"}).to_string(),
            400,
        ),
        (
            json!({"name": "", "channel": "news", "data": "{}"}).to_string(),
            400,
        ),
        (
            json!({"name": "e", "channel": "bad:name", "data": "{}"}).to_string(),
            400,
        ),
    ] {
        let (code, body) = status(signed(&s, "POST", "/apps/7/events", &bad, SECRET, now)).await;
        assert_eq!(code, expected, "{bad}: {body}");
    }
    let batch: Vec<Value> = (0..11)
        .map(|_| json!({"name": "e", "channel": "news", "data": "{}"}))
        .collect();
    let batch = json!({"batch": batch}).to_string();
    assert_eq!(
        status(signed(
            &s,
            "POST",
            "/apps/7/batch_events",
            &batch,
            SECRET,
            now
        ))
        .await
        .0,
        400
    );
    let (code, body) = status(signed(&s, "GET", "/apps/7/channels", "", SECRET, now)).await;
    assert_eq!((code, body.as_str()), (200, "{\"channels\":{}}"));
    // users of a channel that is not a presence one: refused.
    let (code, _) = status(signed(
        &s,
        "GET",
        "/apps/7/channels/news/users",
        "",
        SECRET,
        now,
    ))
    .await;
    assert_eq!(code, 400);
    s.stop().await;
}

#[test]
fn an_app_in_a_namespace_that_does_not_exist_is_refused_naming_the_key() {
    let err = config_refusal(&config(json!({"namespace": "missing"})));
    assert!(err.contains("pusher.apps[0].namespace"), "{err}");
}

#[tokio::test]
async fn a_socket_stays_subscribed_when_live_delivery_starts_over() {
    let s = TestServer::start(config(json!({}))).await;
    let (mut ws, _) = established(&s).await;
    subscribe_public(&mut ws, "news").await;
    let publish = |n: u32| {
        s.api(
            "publish",
            json!({"channel": "app:news", "data": {"event": "e", "data": {"n": n}}}),
        )
    };
    publish(1).await;
    assert_eq!(message(&mut ws).await.2, json!({"n": 1}));
    // A new stream epoch: Centrifugo subscribers are told to recover; the
    // Pusher socket, which cannot, keeps receiving.
    s.api("history_remove", json!({"channel": "app:news"}))
        .await;
    publish(2).await;
    publish(3).await;
    loop {
        let (event, _, data) = message(&mut ws).await;
        assert_eq!(event, "e");
        if data == json!({"n": 3}) {
            break;
        }
    }
    s.stop().await;
}

#[tokio::test]
async fn event_data_arrives_as_sent_and_client_events_are_rate_limited() {
    let s = TestServer::start(config(json!({"max_client_events_per_second": 2}))).await;
    let (mut a, id) = established(&s).await;
    let signature = auth(&format!("{id}:private-doc"));
    send(
        &mut a,
        json!({"event": "pusher:subscribe", "data": {"channel": "private-doc", "auth": signature}}),
    )
    .await;
    assert_eq!(
        message(&mut a).await.0,
        "pusher_internal:subscription_succeeded"
    );
    // The HTTP API's data comes out byte for byte: key order, big numbers.
    let data = r#"{"b":1,"a":12345678901234567890123}"#;
    let event = json!({"name": "e", "channel": "private-doc", "data": data}).to_string();
    let (code, _) = status(signed(&s, "POST", "/apps/7/events", &event, SECRET, now())).await;
    assert_eq!(code, 200);
    match a.read().await {
        Event::Msg(m) => assert_eq!(m["data"], data, "{m}"),
        Event::Closed(c) => panic!("{c:?}"),
    }
    // Two client events a second pass; the third is refused with 4301.
    for _ in 0..3 {
        send(
            &mut a,
            json!({"event": "client-x", "channel": "private-doc", "data": {}}),
        )
        .await;
    }
    let (event, _, data) = message(&mut a).await;
    assert_eq!(
        (event.as_str(), data["code"].as_u64()),
        ("pusher:error", Some(4301))
    );
    // Client events are not kept in the channel's history.
    let h = s
        .api(
            "history",
            json!({"channel": "app:private-doc", "limit": 10}),
        )
        .await;
    assert_eq!(
        h["result"]["publications"].as_array().unwrap().len(),
        1,
        "{h}"
    );
    s.stop().await;
}

#[test]
fn two_apps_in_one_namespace_are_refused() {
    let mut c = config(json!({}));
    let mut second = c["pusher"]["apps"][0].clone();
    second["id"] = json!("8");
    second["key"] = json!("other-key");
    c["pusher"]["apps"].as_array_mut().unwrap().push(second);
    let err = config_refusal(&c);
    assert!(err.contains("pusher.apps[1].namespace"), "{err}");
}

/// A Pusher socket that stops reading while events pile up is closed with
/// 4100 once its queue overflows, even while a write to it waits.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_socket_that_does_not_read_is_closed_with_4100() {
    const QUEUE: usize = 64 * 1024;
    let mut c = config(json!({}));
    merge(
        &mut c,
        json!({"client": {"queue_max_size": QUEUE}, "websocket": {"write_timeout": "30s"}}),
    );
    let s = TestServer::start(c).await;
    let (mut ws, _) = established(&s).await;
    subscribe_public(&mut ws, "news").await;
    let published = overflow(
        &s,
        "app:news",
        |n, pad| json!({"event": "e", "data": {"n": n, "pad": pad}}),
    )
    .await;
    // What reached the socket, in order, then the close saying why.
    let mut got = 0;
    let close = loop {
        match ws.read().await {
            Event::Msg(m) => {
                let data: Value = serde_json::from_str(m["data"].as_str().unwrap()).unwrap();
                assert_eq!(data["n"], json!(got));
                got += 1;
            }
            Event::Closed(c) => break c,
        }
    };
    assert_eq!(close.map(|c| c.0), Some(4100));
    assert!(got < published, "{got} of {published}");
    s.stop().await;
}

#[tokio::test]
async fn a_pusher_socket_compresses_as_websocket_compression_says() {
    let mut c = config(json!({}));
    merge(&mut c, json!({"websocket": {"compression": true}}));
    let s = TestServer::start(c).await;
    let url = format!("ws://{}/app/{KEY}?protocol=7", s.addr);
    let mut ws = Ws::open_compressed(&url).await;
    assert!(ws.extensions.is_some(), "agreed");
    assert_eq!(message(&mut ws).await.0, "pusher:connection_established");
    subscribe_public(&mut ws, "feed").await;
    let text = "a long line of the feed ".repeat(300);
    let r = s
        .api(
            "publish",
            json!({"channel": "app:feed", "data": {"event": "post", "data": text}}),
        )
        .await;
    assert!(r.get("error").is_none(), "{r}");
    let (event, channel, data) = message(&mut ws).await;
    assert_eq!((event.as_str(), channel.as_deref()), ("post", Some("feed")));
    assert_eq!(data, json!(text));
    s.stop().await;
}
