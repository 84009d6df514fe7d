//! Pusher's subscription counting: the subscribers of a channel hear how
//! many it has when that changes, presence channels excepted, large
//! channels throttled, and the `subscription_count` webhook.

use serde_json::{json, Value};

use super::{config, established, message, nothing_more, send, subscribe_public};
use herald_testkit::*;

/// The next message, which must be the channel's count.
async fn count(ws: &mut Ws, channel: &str) -> u64 {
    let (event, on, data) = message(ws).await;
    assert_eq!(
        (event.as_str(), on.as_deref()),
        ("pusher_internal:subscription_count", Some(channel)),
        "{data}"
    );
    data["subscription_count"].as_u64().expect("a count")
}

/// Counts until `want` comes (changes close together may be told once,
/// with the later figure).
async fn count_reaches(ws: &mut Ws, channel: &str, want: u64) {
    loop {
        let n = count(ws, channel).await;
        assert!(n <= want, "{n} is past {want}");
        if n == want {
            return;
        }
    }
}

fn counting(extra: Value) -> Value {
    let mut app = json!({"enable_subscription_count": true});
    merge(&mut app, extra);
    config(app)
}

#[tokio::test]
async fn subscribers_hear_their_channels_count_when_it_changes() {
    let s = TestServer::start(counting(json!({}))).await;
    let (mut a, _) = established(&s).await;
    let (mut b, _) = established(&s).await;
    let (mut elsewhere, _) = established(&s).await;
    subscribe_public(&mut elsewhere, "other").await;
    assert_eq!(count(&mut elsewhere, "other").await, 1);

    subscribe_public(&mut a, "news").await;
    assert_eq!(count(&mut a, "news").await, 1);
    subscribe_public(&mut b, "news").await;
    assert_eq!(count(&mut b, "news").await, 2);
    assert_eq!(count(&mut a, "news").await, 2);

    // A Centrifugo subscriber of the same channel is counted too.
    let mut c = Ws::connected(&format!("ws://{}/connection/websocket", s.addr), "u").await;
    s.api("subscribe", json!({"user": "u", "channel": "app:news"}))
        .await;
    assert_eq!(c.push().await["channel"], "app:news");
    send(
        &mut b,
        json!({"event": "pusher:unsubscribe", "data": {"channel": "news"}}),
    )
    .await;
    assert_eq!(count(&mut a, "news").await, 2);

    // A socket that goes away is a subscriber less.
    let (mut d, _) = established(&s).await;
    subscribe_public(&mut d, "news").await;
    assert_eq!(count(&mut d, "news").await, 3);
    count_reaches(&mut a, "news", 3).await;
    d.close().await;
    assert_eq!(count(&mut a, "news").await, 2);

    // The other channel heard nothing of this.
    nothing_more(&mut elsewhere).await;
    s.stop().await;
}

#[tokio::test]
async fn presence_channels_and_apps_that_do_not_count_hear_no_counts() {
    let s = TestServer::start(counting(json!({}))).await;
    let (mut a, a_id) = established(&s).await;
    let channel_data = json!({ "user_id": "ann" }).to_string();
    let signature = super::auth(&format!("{a_id}:presence-room:{channel_data}"));
    send(
        &mut a,
        json!({"event": "pusher:subscribe", "data": {
            "channel": "presence-room", "auth": signature, "channel_data": channel_data}}),
    )
    .await;
    assert_eq!(
        message(&mut a).await.0,
        "pusher_internal:subscription_succeeded"
    );
    // A public channel after it is counted: had the presence channel been,
    // its count would have come first.
    subscribe_public(&mut a, "news").await;
    assert_eq!(count(&mut a, "news").await, 1);
    nothing_more(&mut a).await;
    s.stop().await;

    let s = TestServer::start(config(json!({}))).await;
    let (mut a, _) = established(&s).await;
    subscribe_public(&mut a, "news").await;
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    nothing_more(&mut a).await;
    s.stop().await;
}

/// `n` sockets subscribed to `channel`, the first having heard the count
/// reach `n`.
async fn crowd(s: &TestServer, channel: &str, n: u64) -> Vec<Ws> {
    let mut sockets = Vec::new();
    for _ in 0..n {
        let (mut ws, _) = established(s).await;
        subscribe_public(&mut ws, channel).await;
        sockets.push(ws);
    }
    count_reaches(&mut sockets[0], channel, n).await;
    sockets
}

#[tokio::test]
async fn a_large_channel_hears_its_count_at_most_once_an_interval() {
    let s = TestServer::start(counting(json!({"subscription_count_interval": "1h"}))).await;
    // Counts come as they change while the channel is small...
    let mut sockets = crowd(&s, "crowd", 101).await;
    // ...and once it is over 100, not again within the interval...
    let (mut late, _) = established(&s).await;
    subscribe_public(&mut late, "crowd").await;
    // ...while other channels are counted at once meanwhile.
    subscribe_public(&mut sockets[0], "side").await;
    assert_eq!(count(&mut sockets[0], "side").await, 1);
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    nothing_more(&mut sockets[0]).await;
    nothing_more(&mut late).await;
    s.stop().await;

    // When the interval has passed, the change held back is told.
    let s = TestServer::start(counting(json!({"subscription_count_interval": "300ms"}))).await;
    let mut sockets = crowd(&s, "crowd", 101).await;
    let (mut late, _) = established(&s).await;
    subscribe_public(&mut late, "crowd").await;
    assert_eq!(count(&mut late, "crowd").await, 102);
    assert_eq!(count(&mut sockets[0], "crowd").await, 102);
    s.stop().await;
}

#[tokio::test]
async fn the_subscription_count_webhook_says_each_count() {
    let receiver = Receiver::start().await;
    let hooks = json!({"enable_subscription_count": true,
        "webhooks": [{"url": receiver.url(), "event_types": ["subscription_count"]}]});
    let s = TestServer::start(config(hooks)).await;
    let (mut a, _) = established(&s).await;
    subscribe_public(&mut a, "news").await;
    assert_eq!(count(&mut a, "news").await, 1);
    send(
        &mut a,
        json!({"event": "pusher:unsubscribe", "data": {"channel": "news"}}),
    )
    .await;
    eventually("two subscription_count webhooks", || async {
        receiver.of("subscription_count").len() >= 2
    })
    .await;
    let mut told: Vec<Value> = receiver
        .of("subscription_count")
        .iter()
        .map(|r| r.body["events"][0].clone())
        .collect();
    // Delivered at least once each, in any order.
    told.sort_by_key(|e| e["subscription_count"].as_u64());
    told.dedup();
    assert_eq!(
        told,
        [
            json!({"name": "subscription_count", "channel": "news", "subscription_count": 0}),
            json!({"name": "subscription_count", "channel": "news", "subscription_count": 1}),
        ]
    );
    s.stop().await;
}
