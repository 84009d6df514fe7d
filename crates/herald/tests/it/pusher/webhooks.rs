//! A Pusher app's webhooks: Pusher's body and signature, through Herald's
//! durable queue (retried with the same delivery id), members counted per
//! user, channels occupied by any subscriber.

use serde_json::{json, Value};

use super::{auth, config, established, message, send, KEY, SECRET};
use herald_testkit::*;

/// Subscribes a socket to presence channel `channel` as `user`.
async fn join(ws: &mut Ws, id: &str, channel: &str, user: &str) {
    let channel_data = json!({ "user_id": user }).to_string();
    let signature = auth(&format!("{id}:{channel}:{channel_data}"));
    send(
        ws,
        json!({"event": "pusher:subscribe", "data": {
            "channel": channel, "auth": signature, "channel_data": channel_data}}),
    )
    .await;
    loop {
        let (event, _, _) = message(ws).await;
        if event == "pusher_internal:subscription_succeeded" {
            return;
        }
    }
}

/// The single event of each Pusher body received for `name`.
fn events(receiver: &Receiver, name: &str) -> Vec<Value> {
    receiver
        .of(name)
        .iter()
        .map(|r| {
            let events = r.body["events"].as_array().expect("Pusher body");
            assert_eq!(events.len(), 1, "{}", r.raw);
            events[0].clone()
        })
        .collect()
}

async fn wait_for(receiver: &Receiver, name: &str, n: usize) {
    eventually(&format!("{n} {name} webhooks"), || async {
        receiver.of(name).len() >= n
    })
    .await;
}

#[tokio::test]
async fn pusher_webhooks_come_in_pushers_format_signed_with_the_app_secret() {
    let receiver = Receiver::start().await;
    let hooks = json!({"webhooks": [{"url": receiver.url(), "retry_initial_delay": "100ms"}]});
    let s = TestServer::start(config(hooks)).await;

    // ann twice and bob once in a presence channel.
    let (mut ann1, ann1_id) = established(&s).await;
    let (mut ann2, ann2_id) = established(&s).await;
    let (mut bob, bob_id) = established(&s).await;
    join(&mut ann1, &ann1_id, "presence-room", "ann").await;
    join(&mut ann2, &ann2_id, "presence-room", "ann").await;
    join(&mut bob, &bob_id, "presence-room", "bob").await;
    wait_for(&receiver, "member_added", 2).await;
    wait_for(&receiver, "channel_occupied", 1).await;

    // A client event, with its data as the text the socket sent.
    send(
        &mut bob,
        json!({"event": "client-typing", "channel": "presence-room", "data": {"on": true}}),
    )
    .await;
    wait_for(&receiver, "client_event", 1).await;
    assert_eq!(
        events(&receiver, "client_event"),
        vec![json!({"name": "client_event", "channel": "presence-room",
            "event": "client-typing", "data": "{\"on\":true}",
            "socket_id": bob_id, "user_id": "bob"})]
    );

    // ann's second socket leaving keeps her a member; bob leaving does not.
    send(
        &mut ann2,
        json!({"event": "pusher:unsubscribe", "data": {"channel": "presence-room"}}),
    )
    .await;
    bob.close().await;
    wait_for(&receiver, "member_removed", 1).await;
    ann1.close().await;
    wait_for(&receiver, "channel_vacated", 1).await;
    wait_for(&receiver, "member_removed", 2).await;
    eventually("every event delivered", || async {
        let recorded = s.metric("herald_webhook_events_total").await;
        s.metric("herald_webhook_delivered_total").await == recorded
    })
    .await;

    let mut added: Vec<Value> = events(&receiver, "member_added");
    added.sort_by_key(|e| e["user_id"].to_string());
    assert_eq!(
        added,
        vec![
            json!({"name": "member_added", "channel": "presence-room", "user_id": "ann"}),
            json!({"name": "member_added", "channel": "presence-room", "user_id": "bob"}),
        ]
    );
    let removed: Vec<Value> = events(&receiver, "member_removed");
    assert_eq!(
        removed.iter().map(|e| &e["user_id"]).collect::<Vec<_>>(),
        [&json!("bob"), &json!("ann")],
        "bob left first; ann with her last socket"
    );
    // The channel is named as the app knows it, without the namespace.
    assert_eq!(
        events(&receiver, "channel_occupied"),
        vec![json!({"name": "channel_occupied", "channel": "presence-room"})]
    );
    assert_eq!(
        events(&receiver, "channel_vacated"),
        vec![json!({"name": "channel_vacated", "channel": "presence-room"})]
    );
    // Only Pusher's events, each signed as Pusher signs them.
    let all = receiver.all();
    assert_eq!(all.len(), 7, "{all:?}");
    for r in &all {
        assert_eq!(r.header("x-pusher-key"), Some(KEY));
        let expected = herald::signing::hmac_sha256_hex(SECRET.as_bytes(), r.raw.as_bytes());
        assert_eq!(r.header("x-pusher-signature"), Some(expected.as_str()));
        assert_eq!(r.header("content-type"), Some("application/json"));
        assert!(r.body["time_ms"].as_i64().unwrap() > 1_700_000_000_000);
        assert!(r.header("x-herald-signature").is_none());
    }
    s.stop().await;
}

#[tokio::test]
async fn pusher_webhooks_take_event_types_retry_and_keep_dead_letters() {
    let receiver = Receiver::start().await;
    receiver.answer(503);
    let hooks = json!({"webhooks": [{"url": receiver.url(), "event_types": ["channel_occupied"],
        "retry_initial_delay": "100ms", "max_attempts": 2}]});
    let mut c = config(hooks);
    for ns in c["channel"]["namespaces"].as_array_mut().unwrap() {
        ns["allow_subscribe_for_client"] = json!(true);
    }
    let s = TestServer::start(c).await;

    // A Centrifugo client occupies the app's channel too; a channel of
    // another namespace is not the app's.
    let mut c = s.client("carol").await;
    for channel in ["other:x", "app:news"] {
        let r = c.cmd(json!({"subscribe": {"channel": channel}})).await;
        assert!(r.get("subscribe").is_some(), "{r}");
    }
    // Tried twice, then a dead letter under the app's webhook name.
    eventually("a dead letter", || async {
        let r = s
            .api("webhook_dead_letters", json!({"webhook": "pusher:7:0"}))
            .await;
        r["result"]["dead_letters"]
            .as_array()
            .is_some_and(|d| d.len() == 1)
    })
    .await;
    let r = s
        .api("webhook_dead_letters", json!({"webhook": "pusher:7:0"}))
        .await;
    let dead = &r["result"]["dead_letters"][0];
    assert_eq!(dead["attempts"], 2);
    assert_eq!(dead["event"], "channel_occupied");
    let id = dead["id"].as_str().unwrap().to_string();

    receiver.answer(200);
    let r = s.api("webhook_redrive", json!({"ids": [id]})).await;
    assert_eq!(r["result"]["redriven"], 1, "{r}");
    wait_for(&receiver, "channel_occupied", 3).await;
    let got = receiver.of("channel_occupied");
    assert!(
        got.iter()
            .all(|r| r.header("x-herald-delivery") == Some(id.as_str())),
        "every attempt carries the same delivery id"
    );
    assert!(
        got.iter().all(|r| r.raw == got[0].raw),
        "the same body each time"
    );
    assert_eq!(
        events(&receiver, "channel_occupied")[0],
        json!({"name": "channel_occupied", "channel": "news"})
    );

    // Not asked for: vacated. Once the next channel's occupied event is
    // recorded, a vacated one made before it would have been too.
    let r = c.cmd(json!({"unsubscribe": {"channel": "app:news"}})).await;
    assert!(r.get("unsubscribe").is_some(), "{r}");
    let r = c.cmd(json!({"subscribe": {"channel": "app:sport"}})).await;
    assert!(r.get("subscribe").is_some(), "{r}");
    wait_for(&receiver, "channel_occupied", 4).await;
    assert_eq!(s.metric("herald_webhook_events_total").await, 2);
    assert_eq!(receiver.all().len(), 4);
    s.stop().await;
}

#[test]
fn bad_pusher_webhooks_are_refused_naming_the_key() {
    for (hook, key) in [
        (json!({"url": "ftp://x"}), "pusher.apps[0].webhooks[0].url"),
        (
            json!({"url": "http://127.0.0.1:1/h", "event_types": ["connect"]}),
            "pusher.apps[0].webhooks[0].event_types",
        ),
        (
            json!({"url": "http://127.0.0.1:1/h", "max_attempts": 0}),
            "pusher.apps[0].webhooks[0].max_attempts",
        ),
    ] {
        let err = config_refusal(&config(json!({ "webhooks": [hook] })));
        assert!(err.contains(key), "{key}: {err}");
    }
    // Herald's own webhooks cannot take the names of the apps' ones.
    let named = json!({"webhooks": [{"name": "pusher:7:0", "url": "http://127.0.0.1:1/h"}]});
    let mut c = config(json!({}));
    merge(&mut c, named);
    let err = config_refusal(&c);
    assert!(err.contains("webhooks[0].name"), "{err}");
}

#[tokio::test]
async fn a_cache_channel_hands_new_subscribers_its_last_event_or_a_cache_miss() {
    let receiver = Receiver::start().await;
    let hooks = json!({"webhooks": [{"url": receiver.url(), "event_types": ["cache_miss"]}]});
    let s = TestServer::start(config(hooks)).await;

    // Nothing cached yet: a cache miss, to the socket and the webhook.
    let (mut first, _) = established(&s).await;
    send(
        &mut first,
        json!({"event": "pusher:subscribe", "data": {"channel": "cache-score"}}),
    )
    .await;
    assert_eq!(
        message(&mut first).await.0,
        "pusher_internal:subscription_succeeded"
    );
    let (event, channel, _) = message(&mut first).await;
    assert_eq!(
        (event.as_str(), channel.as_deref()),
        ("pusher:cache_miss", Some("cache-score"))
    );
    wait_for(&receiver, "cache_miss", 1).await;
    // Another socket missing at once: told to the socket, one webhook.
    let (mut second, _) = established(&s).await;
    send(
        &mut second,
        json!({"event": "pusher:subscribe", "data": {"channel": "cache-score"}}),
    )
    .await;
    assert_eq!(
        message(&mut second).await.0,
        "pusher_internal:subscription_succeeded"
    );
    assert_eq!(message(&mut second).await.0, "pusher:cache_miss");
    assert_eq!(
        events(&receiver, "cache_miss"),
        vec![json!({"name": "cache_miss", "channel": "cache-score"})]
    );

    // Two events; a new subscriber gets the last one first, then what
    // comes next.
    for n in [1, 2] {
        let r = s
            .api(
                "publish",
                json!({"channel": "app:cache-score", "data": {"event": "score", "data": {"n": n}}}),
            )
            .await;
        assert!(r.get("error").is_none(), "{r}");
        assert_eq!(message(&mut first).await.2, json!({"n": n}));
    }
    let (mut later, id) = established(&s).await;
    // A private cache channel works the same (signed as private ones are).
    send(
        &mut later,
        json!({"event": "pusher:subscribe", "data": {"channel": "cache-score"}}),
    )
    .await;
    assert_eq!(
        message(&mut later).await.0,
        "pusher_internal:subscription_succeeded"
    );
    let (event, channel, data) = message(&mut later).await;
    assert_eq!(
        (event.as_str(), channel.as_deref()),
        ("score", Some("cache-score"))
    );
    assert_eq!(data, json!({"n": 2}));
    let signature = auth(&format!("{id}:private-cache-x"));
    send(
        &mut later,
        json!({"event": "pusher:subscribe", "data": {
        "channel": "private-cache-x", "auth": signature}}),
    )
    .await;
    assert_eq!(
        message(&mut later).await.0,
        "pusher_internal:subscription_succeeded"
    );
    assert_eq!(message(&mut later).await.0, "pusher:cache_miss");
    // A plain channel never says cache_miss.
    send(
        &mut later,
        json!({"event": "pusher:subscribe", "data": {"channel": "score"}}),
    )
    .await;
    assert_eq!(
        message(&mut later).await.0,
        "pusher_internal:subscription_succeeded"
    );
    s.api(
        "publish",
        json!({"channel": "app:score", "data": {"event": "e", "data": "x"}}),
    )
    .await;
    assert_eq!(message(&mut later).await.0, "e");
    wait_for(&receiver, "cache_miss", 2).await;
    s.stop().await;
}
