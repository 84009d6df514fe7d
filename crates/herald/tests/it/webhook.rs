//! Durable webhooks against a real receiver on loopback: which events come,
//! signed, once each; user online/offline and channel occupied/vacated at
//! the first and last holder; retries with growing delays, dead letters and
//! their redrive through the server API.

use std::time::Duration;

use serde_json::{json, Value};

use herald_testkit::*;

const SECRET: &str = "hook-secret";

fn hooks(url: &str, extra: Value) -> Value {
    let mut hook = json!({"name": "app", "url": url, "secret": SECRET,
        "retry_initial_delay": "200ms", "timeout": "2s"});
    merge(&mut hook, extra);
    json!({"webhooks": [hook]})
}

fn signature(body: &str) -> String {
    let hex = herald::signing::hmac_sha256_hex(SECRET.as_bytes(), body.as_bytes());
    format!("sha256={hex}")
}

/// Waits until every event the server recorded was delivered, so that
/// what has not come will not.
async fn settled(s: &TestServer) {
    eventually("every recorded event delivered", || async {
        let recorded = s.metric("herald_webhook_events_total").await;
        recorded > 0 && s.metric("herald_webhook_delivered_total").await == recorded
    })
    .await;
}

async fn count(receiver: &Receiver, event: &str, n: usize) {
    eventually(&format!("{n} {event} events"), || async {
        receiver.of(event).len() >= n
    })
    .await;
}

#[tokio::test]
async fn events_come_signed_once_each_with_online_and_occupied_at_the_edges() {
    let receiver = Receiver::start().await;
    let mut config = hooks(&receiver.url(), json!({}));
    // A second webhook wanting only presence of users.
    config["webhooks"].as_array_mut().unwrap().push(json!({
        "name": "online", "url": receiver.url(), "events": ["user_online", "user_offline"],
    }));
    let s = TestServer::start(config).await;

    let mut a = s.client("alice").await;
    let mut b = s.client("alice").await;
    for ws in [&mut a, &mut b] {
        let r = ws.cmd(json!({"subscribe": {"channel": "chat:x"}})).await;
        assert!(r.get("subscribe").is_some(), "{r}");
    }
    let r = a.cmd(json!({"unsubscribe": {"channel": "chat:x"}})).await;
    assert!(r.get("unsubscribe").is_some(), "{r}");
    count(&receiver, "user_online", 2).await;
    settled(&s).await;
    assert!(
        receiver.of("user_offline").is_empty(),
        "alice is still online"
    );
    assert!(
        receiver.of("channel_vacated").is_empty(),
        "b is still in chat:x"
    );

    b.close().await;
    count(&receiver, "channel_vacated", 1).await;
    count(&receiver, "disconnect", 1).await;
    settled(&s).await;
    assert!(
        receiver.of("user_offline").is_empty(),
        "a is still connected"
    );
    a.close().await;
    count(&receiver, "user_offline", 2).await;
    settled(&s).await;

    let got = receiver.all();
    let of_app = |event: &str| {
        got.iter()
            .filter(|r| r.event() == event && r.header("x-herald-signature").is_some())
            .count()
    };
    assert_eq!(of_app("connect"), 2);
    assert_eq!(of_app("subscribe"), 2);
    assert_eq!(of_app("unsubscribe"), 2, "a's own and b's at its close");
    assert_eq!(of_app("channel_occupied"), 1);
    assert_eq!(of_app("channel_vacated"), 1);
    assert_eq!(of_app("user_online"), 1);
    assert_eq!(of_app("user_offline"), 1);
    assert_eq!(of_app("disconnect"), 2);
    // The second webhook got only what it asked for, unsigned (no secret).
    let unsigned: Vec<&str> = got
        .iter()
        .filter(|r| r.header("x-herald-signature").is_none())
        .map(|r| r.event())
        .collect();
    assert_eq!(unsigned, ["user_online", "user_offline"]);

    for r in got.iter().filter(|r| r.body["node"].is_string()) {
        assert_eq!(r.header("x-herald-event"), Some(r.event()));
        assert_eq!(r.header("x-herald-delivery"), r.body["id"].as_str());
        assert!(r.body["time_ms"].as_i64().unwrap() > 1_600_000_000_000);
        assert_eq!(r.header("content-type"), Some("application/json"));
    }
    let signed: Vec<_> = got
        .iter()
        .filter(|r| r.header("x-herald-signature") == Some(&signature(&r.raw)))
        .collect();
    assert_eq!(
        signed.len(),
        got.len() - 2,
        "every event of `app` is signed with its secret"
    );
    let disconnect = got.iter().find(|r| r.event() == "disconnect").unwrap();
    assert_eq!(disconnect.body["user"], "alice");
    assert_eq!(disconnect.body["code"], 3000, "{:?}", disconnect.body);
    let occupied = got
        .iter()
        .find(|r| r.event() == "channel_occupied")
        .unwrap();
    assert_eq!(occupied.body["channel"], "chat:x");
    let ids: std::collections::HashSet<&str> =
        got.iter().filter_map(|r| r.body["id"].as_str()).collect();
    assert_eq!(ids.len(), got.len(), "each delivery once, with its own id");
}

#[tokio::test]
async fn failures_are_retried_with_growing_delays_then_kept_and_redriven() {
    let receiver = Receiver::start().await;
    receiver.answer(500);
    let s = TestServer::start(hooks(
        &receiver.url(),
        json!({"events": ["connect"], "max_attempts": 4}),
    ))
    .await;
    let _ws = s.client("bob").await;
    count(&receiver, "connect", 4).await;
    let tries = receiver.of("connect");
    let id = tries[0].body["id"].as_str().unwrap().to_string();
    assert!(
        tries.iter().all(|t| t.body["id"] == json!(id)),
        "the same delivery each time"
    );
    let gaps: Vec<Duration> = tries.windows(2).map(|w| w[1].at - w[0].at).collect();
    for (k, gap) in gaps.iter().enumerate() {
        // 200 ms doubled per attempt, at most 25% less.
        let least = Duration::from_millis(150) * (1 << k);
        assert!(*gap >= least, "gap {k}: {gap:?} < {least:?} ({gaps:?})");
    }
    assert!(gaps[2] > gaps[0], "delays grow: {gaps:?}");

    eventually("a dead letter", || async {
        let r = s.api("webhook_dead_letters", json!({})).await;
        r["result"]["dead_letters"]
            .as_array()
            .is_some_and(|d| d.len() == 1)
    })
    .await;
    let r = s
        .api("webhook_dead_letters", json!({"webhook": "app"}))
        .await;
    let dead = &r["result"]["dead_letters"][0];
    assert_eq!(dead["id"], json!(id));
    assert_eq!(dead["attempts"], 4);
    assert_eq!(dead["last_error"], "HTTP status 500");
    assert_eq!(dead["body"]["user"], "bob");
    assert_eq!(s.metric("herald_webhook_dead_letters_total").await, 1);
    assert_eq!(s.metric("herald_webhook_failed_attempts_total").await, 3);
    // No further attempts for a dead letter.
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert_eq!(receiver.of("connect").len(), 4);

    receiver.answer(204);
    let r = s.api("webhook_redrive", json!({"ids": [id]})).await;
    assert_eq!(r["result"]["redriven"], 1, "{r}");
    count(&receiver, "connect", 5).await;
    assert_eq!(receiver.of("connect")[4].body["id"], json!(id));
    eventually("no dead letters", || async {
        let r = s.api("webhook_dead_letters", json!({})).await;
        r["result"]["dead_letters"]
            .as_array()
            .is_some_and(|d| d.is_empty())
    })
    .await;
    eventually("counted delivered", || async {
        s.metric("herald_webhook_delivered_total").await == 1
    })
    .await;
}

#[tokio::test]
async fn webhook_api_without_webhooks_is_not_available() {
    let s = TestServer::start(json!({})).await;
    let r = s.api("webhook_dead_letters", json!({})).await;
    assert_eq!(r["error"]["code"], 108, "{r}");
}

#[tokio::test]
async fn bad_webhook_configs_are_refused_naming_the_key() {
    for (hook, key) in [
        (json!({"url": "http://x"}), "webhooks[0].name"),
        (json!({"name": "a", "url": "ftp://x"}), "webhooks[0].url"),
        (
            json!({"name": "a", "url": "http://x", "events": ["nope"]}),
            "webhooks[0].events",
        ),
        (
            json!({"name": "a", "url": "http://x", "max_attempts": 0}),
            "webhooks[0].max_attempts",
        ),
        (
            json!({"name": "a", "url": "http://x", "max_attempts": 31}),
            "webhooks[0].max_attempts",
        ),
        (json!({"name": "a", "url": "http://"}), "webhooks[0].url"),
    ] {
        let err = config_refusal(&json!({"webhooks": [hook]}));
        assert!(err.contains(key), "{key}: {err}");
    }
}

/// Two nodes on one PostgreSQL database: a user connected to both is
/// online once and offline once, and every event is delivered by one node.
#[tokio::test]
async fn nodes_sharing_postgres_agree_on_online_and_deliver_each_event_once() {
    let Some(db) = TestDatabase::create() else {
        return;
    };
    let receiver = Receiver::start().await;
    let mut config = hooks(&receiver.url(), json!({}));
    merge(
        &mut config,
        json!({"storage": {"type": "postgres", "postgres": {"url": db.url}}}),
    );
    let one = TestServer::start(config.clone()).await;
    let two = TestServer::start(config).await;
    let mut clients = Vec::new();
    for _ in 0..3 {
        clients.push(one.client("carol").await);
        clients.push(two.client("carol").await);
    }
    for ws in clients.iter_mut() {
        let r = ws
            .cmd(json!({"subscribe": {"channel": "chat:shared"}}))
            .await;
        assert!(r.get("subscribe").is_some(), "{r}");
    }
    count(&receiver, "subscribe", 6).await;
    for ws in clients {
        ws.close().await;
    }
    count(&receiver, "user_offline", 1).await;
    count(&receiver, "disconnect", 6).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let got = receiver.all();
    let n = |e: &str| got.iter().filter(|r| r.event() == e).count();
    assert_eq!(n("user_online"), 1);
    assert_eq!(n("user_offline"), 1);
    assert_eq!(n("channel_occupied"), 1);
    assert_eq!(n("channel_vacated"), 1);
    assert_eq!(n("connect"), 6);
    let ids: std::collections::HashSet<&str> =
        got.iter().filter_map(|r| r.body["id"].as_str()).collect();
    assert_eq!(ids.len(), got.len(), "no event delivered twice");
    one.stop().await;
    two.stop().await;
}
