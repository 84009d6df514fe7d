//! Pusher apps across a cluster: channel counts and watchlists see every
//! node's sockets.

use std::time::Duration;

use herald_testkit::{pusher_auth, pusher_message, pusher_signed_with, ClusterNode, Ws};
use serde_json::{json, Value};

use super::{node, nodes_in_info, subscribe};

/// The channels API and the Pusher API's channel counts take every node's
/// subscribers into account (a survey of the cluster), whichever node is
/// asked.
pub(crate) async fn channels_counted_across_nodes(mut cfg: Value) {
    const KEY: &str = "pk";
    const SECRET: &str = "ps";
    herald_testkit::merge(
        &mut cfg,
        json!({
            "channel": {"namespaces": [{"name": "chat", "allow_subscribe_for_client": true},
                                       {"name": "pa"}]},
            "pusher": {"apps": [{"id": "7", "key": KEY, "secret": SECRET, "namespace": "pa",
                                 "enable_subscription_count": true}]}
        }),
    );
    let nodes: Vec<ClusterNode> = ["a", "b"].iter().map(|n| node(n, &cfg)).collect();
    nodes_in_info(&nodes[0], 2).await;
    nodes_in_info(&nodes[1], 2).await;
    let mut clients = Vec::new();
    for (at, user, channel) in [
        (0, "u1", "chat:x"),
        (0, "u2", "chat:x"),
        (1, "u3", "chat:x"),
        (1, "u4", "chat:y"),
    ] {
        let mut ws = nodes[at].client(user).await;
        subscribe(&mut ws, channel).await;
        clients.push(ws);
    }
    // A Pusher socket on `node`, subscribed to public channel news.
    let news_socket = |node: &ClusterNode| {
        let url = format!("ws://{}/app/{KEY}?protocol=7", node.served.addr);
        async move {
            let mut ws = Ws::open(&url).await;
            let established = pusher_message(&mut ws).await.0;
            assert_eq!(established, "pusher:connection_established");
            let subscribe = json!({"event": "pusher:subscribe", "data": {"channel": "news"}});
            ws.send_text(&subscribe.to_string()).await;
            let answer = pusher_message(&mut ws).await.0;
            assert_eq!(answer, "pusher_internal:subscription_succeeded");
            ws
        }
    };
    let mut pusher = news_socket(&nodes[1]).await;

    for asked in &nodes {
        let r = asked.api("channels", json!({})).await;
        let counts: Vec<(String, Value)> = r["channels"]
            .as_object()
            .expect("channels")
            .iter()
            .map(|(k, v)| (k.clone(), v["num_clients"].clone()))
            .collect();
        let want = vec![
            ("chat:x".to_string(), json!(3)),
            ("chat:y".to_string(), json!(1)),
            ("pa:news".to_string(), json!(1)),
        ];
        let mut counts = counts;
        counts.sort_by(|a, b| a.0.cmp(&b.0));
        assert_eq!(counts, want, "asked {}", asked.served.addr);
        let r = asked.api("channels", json!({"pattern": "chat:y"})).await;
        assert_eq!(r["channels"], json!({"chat:y": {"num_clients": 1}}));
    }

    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    let get = |path: &str, more: &[(&str, &str)]| {
        let url = nodes[0].http(&pusher_signed_with("GET", path, "", KEY, SECRET, now, more));
        async move {
            let r = reqwest::get(url).await.expect("reachable");
            assert_eq!(r.status().as_u16(), 200);
            r.json::<Value>().await.expect("JSON")
        }
    };
    let listed = get("/apps/7/channels", &[("info", "subscription_count")]).await;
    assert_eq!(
        listed,
        json!({"channels": {"news": {"subscription_count": 1}}})
    );
    let one = get("/apps/7/channels/news", &[("info", "subscription_count")]).await;
    assert_eq!(one, json!({"occupied": true, "subscription_count": 1}));
    // An event's info, for all its channels at once.
    let event = json!({"name": "e", "data": "{}", "channels": ["news", "quiet"],
                       "info": "subscription_count"})
    .to_string();
    let path = pusher_signed_with("POST", "/apps/7/events", &event, KEY, SECRET, now, &[]);
    let r = reqwest::Client::new()
        .post(nodes[0].http(&path))
        .header("content-type", "application/json")
        .body(event)
        .send()
        .await
        .expect("reachable");
    assert_eq!(r.status().as_u16(), 200);
    let info: Value = r.json().await.unwrap();
    assert_eq!(
        info,
        json!({"channels": {"news": {"subscription_count": 1}, "quiet": {"subscription_count": 0}}})
    );

    // Subscription counting: a socket on node a subscribing makes the one
    // on node b hear the count over both nodes.
    let count = |m: (String, Option<String>, Value)| {
        assert_eq!(m.0, "pusher_internal:subscription_count", "{m:?}");
        assert_eq!(m.1.as_deref(), Some("news"));
        m.2["subscription_count"].as_u64().expect("a count")
    };
    // Its own count, and the event triggered above, in either order.
    let mut two = [
        pusher_message(&mut pusher).await,
        pusher_message(&mut pusher).await,
    ];
    two.sort_by_key(|m| m.0 != "e");
    let [event, own] = two;
    assert_eq!(event.0, "e");
    assert_eq!(count(own), 1);
    let mut other = news_socket(&nodes[0]).await;
    assert_eq!(count(pusher_message(&mut other).await), 2);
    assert_eq!(count(pusher_message(&mut pusher).await), 2);
}

/// The app key and secret of [`watchlist_nodes`]' app.
const WATCH_KEY: &str = "wk";
const WATCH_SECRET: &str = "ws";

/// Two nodes of `cfg` with a Pusher app (`WATCH_KEY`, `WATCH_SECRET`) that has
/// watchlist events, once each knows of the other.
async fn watchlist_nodes(mut cfg: Value) -> Vec<ClusterNode> {
    herald_testkit::merge(
        &mut cfg,
        json!({
            "channel": {"namespaces": [{"name": "wa"}]},
            "pusher": {"apps": [{"id": "9", "key": WATCH_KEY, "secret": WATCH_SECRET, "namespace": "wa",
                                 "enable_watchlist_events": true}]}
        }),
    );
    let nodes: Vec<ClusterNode> = ["a", "b"].iter().map(|n| node(n, &cfg)).collect();
    nodes_in_info(&nodes[0], 2).await;
    nodes_in_info(&nodes[1], 2).await;
    nodes
}

/// A node that dies sends no leaves: its users' presence expires
/// (`presence_ttl`), and the watchers on another node learn they went
/// offline from that node's next reading of presence (every
/// `watchlist::REREAD`, one reading of a channel for all its watchers).
pub(crate) async fn watched_users_of_a_killed_node_go_offline(mut cfg: Value) {
    herald_testkit::merge(
        &mut cfg,
        json!({"engine": {"redis": {"presence_ttl": "2s"}}}),
    );
    let mut nodes = watchlist_nodes(cfg).await;
    let bob = signed_in(&nodes[1], WATCH_KEY, WATCH_SECRET, "bob", Value::Null).await;
    let mut watchers = Vec::new();
    for user in ["ann", "al"] {
        let mut ws = signed_in(&nodes[0], WATCH_KEY, WATCH_SECRET, user, json!(["bob"])).await;
        assert_eq!(
            watchlist_events(&mut ws).await,
            json!([{"name": "online", "user_ids": ["bob"]}])
        );
        watchers.push(ws);
    }
    let b = nodes.pop().expect("node b");
    b.served.signal("KILL");
    drop(b);
    drop(bob);
    // Node a reads again 30 s after its first watcher came.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(45);
    for ws in &mut watchers {
        let events = loop {
            let read = tokio::time::timeout(Duration::from_secs(1), watchlist_events(ws));
            if let Ok(events) = read.await {
                break events;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "no offline within 45 s"
            );
        };
        assert_eq!(events, json!([{"name": "offline", "user_ids": ["bob"]}]));
    }
}

/// A socket of the app with `key`/`secret` on `node`, signed in as `user`
/// with `watchlist` (none: `Value::Null`).
async fn signed_in(
    node: &ClusterNode,
    key: &str,
    secret: &str,
    user: &str,
    watchlist: Value,
) -> Ws {
    let url = format!("ws://{}/app/{key}?protocol=7", node.served.addr);
    let mut ws = Ws::open(&url).await;
    let (event, _, data) = pusher_message(&mut ws).await;
    assert_eq!(event, "pusher:connection_established");
    let id = data["socket_id"].as_str().expect("socket id").to_string();
    let mut user_data = json!({ "id": user });
    if !watchlist.is_null() {
        user_data["watchlist"] = watchlist;
    }
    let user_data = user_data.to_string();
    let auth = pusher_auth(key, secret, &format!("{id}::user::{user_data}"));
    let signin = json!({"event": "pusher:signin", "data": {"auth": auth, "user_data": user_data}});
    ws.send_text(&signin.to_string()).await;
    assert_eq!(pusher_message(&mut ws).await.0, "pusher:signin_success");
    ws
}

/// The next message of `ws`, which must be watchlist events: their list.
async fn watchlist_events(ws: &mut Ws) -> Value {
    let (event, _, data) = pusher_message(ws).await;
    assert_eq!(event, "pusher_internal:watchlist_events", "{data}");
    data["events"].clone()
}

/// A watcher on one node hears of users signing in and out on the other:
/// who is online when it signs in (shared presence), then each change
/// (join and leave events through the broker).
pub(crate) async fn watchlists_across_nodes(cfg: Value) {
    let nodes = watchlist_nodes(cfg).await;
    let bob = signed_in(&nodes[1], WATCH_KEY, WATCH_SECRET, "bob", Value::Null).await;
    let mut ann = signed_in(
        &nodes[0],
        WATCH_KEY,
        WATCH_SECRET,
        "ann",
        json!(["bob", "cy"]),
    )
    .await;
    assert_eq!(
        watchlist_events(&mut ann).await,
        json!([{"name": "online", "user_ids": ["bob"]}, {"name": "offline", "user_ids": ["cy"]}])
    );
    let cy = signed_in(&nodes[1], WATCH_KEY, WATCH_SECRET, "cy", Value::Null).await;
    assert_eq!(
        watchlist_events(&mut ann).await,
        json!([{"name": "online", "user_ids": ["cy"]}])
    );
    drop(bob);
    assert_eq!(
        watchlist_events(&mut ann).await,
        json!([{"name": "offline", "user_ids": ["bob"]}])
    );
    drop(cy);
    assert_eq!(
        watchlist_events(&mut ann).await,
        json!([{"name": "offline", "user_ids": ["cy"]}])
    );
}
