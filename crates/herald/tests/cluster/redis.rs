//! The cluster over Redis: engine, broker, streams and presence.

use std::process::Command;
use std::time::Duration;

use herald_testkit::{env_url, eventually, merge, unique, ClusterNode, OwnServer, TestDatabase};
use serde_json::json;

use super::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_subscribe_on_redis_only_while_they_have_subscribers() {
    let Some(url) = env_url("HERALD_TEST_REDIS_URL") else {
        return;
    };
    let prefix = unique("t");
    let cfg = redis_engine(&url, &prefix);
    let nodes: Vec<ClusterNode> = ["a", "b"].iter().map(|n| node(n, &cfg)).collect();
    let key = format!("{prefix}.client.chat:only");
    assert_eq!(numsub(&url, &key), 0);
    let mut first = nodes[0].client("u1").await;
    let mut second = nodes[0].client("u2").await;
    subscribe(&mut first, "chat:only").await;
    subscribe(&mut second, "chat:only").await;
    // One subscription per node, however many local subscribers.
    assert_eq!(numsub(&url, &key), 1);
    let mut other = nodes[1].client("u3").await;
    subscribe(&mut other, "chat:only").await;
    assert_eq!(numsub(&url, &key), 2);
    first
        .cmd(json!({"unsubscribe": {"channel": "chat:only"}}))
        .await;
    assert_eq!(numsub(&url, &key), 2);
    second.close().await;
    eventually(
        "node a unsubscribed after its last subscriber left",
        || async { numsub(&url, &key) == 1 },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_connections_stay_up_across_health_checks() {
    let Some(url) = env_url("HERALD_TEST_REDIS_URL") else {
        return;
    };
    let mut cfg = redis_engine(&url, &unique("t"));
    merge(
        &mut cfg,
        json!({ "engine": { "redis": { "io_timeout": "200ms" } } }),
    );
    connections_stay_up_across_health_checks(cfg).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_cluster_acts_as_one_server() {
    let Some(url) = env_url("HERALD_TEST_REDIS_URL") else {
        return;
    };
    let cfg = redis_engine(&url, &unique("t"));
    let nodes: Vec<ClusterNode> = ["a", "b", "c"].iter().map(|n| node(n, &cfg)).collect();
    let (a, b, c) = (&nodes[0], &nodes[1], &nodes[2]);

    // info lists every node, with its figures, wherever it is asked.
    nodes_in_info(b, 3).await;

    let mut clients = Vec::new();
    for (i, node) in nodes.iter().enumerate() {
        let mut ws = node.client(&format!("user{i}")).await;
        subscribe(&mut ws, "room:lobby").await;
        clients.push(ws);
    }
    // Publications reach subscribers on every node.
    a.api(
        "publish",
        json!({"channel": "room:lobby", "data": {"n": 1}}),
    )
    .await;
    for ws in &mut clients {
        assert_eq!(next_pub(ws, "room:lobby").await["data"], json!({"n": 1}));
    }
    c.api(
        "publish",
        json!({"channel": "room:lobby", "data": {"n": 2}}),
    )
    .await;
    for ws in &mut clients {
        assert_eq!(next_pub(ws, "room:lobby").await["data"], json!({"n": 2}));
    }

    // Presence is the whole cluster's, asked on any node and by clients.
    let presence = b.api("presence", json!({"channel": "room:lobby"})).await;
    let users: std::collections::BTreeSet<String> = presence["presence"]
        .as_object()
        .unwrap()
        .values()
        .map(|i| i["user"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(users.len(), 3, "{presence}");
    let stats = clients[0]
        .cmd(json!({"presence_stats": {"channel": "room:lobby"}}))
        .await;
    assert_eq!(stats["presence_stats"]["num_clients"], 3, "{stats}");

    eventually("every node's clients counted in info", || async {
        let info = a.api("info", json!({})).await;
        let total: u64 = info["nodes"]
            .as_array()
            .unwrap()
            .iter()
            .map(|n| n["num_clients"].as_u64().unwrap())
            .sum();
        total == 3
    })
    .await;
    let info = a.api("info", json!({})).await;
    let mut names: Vec<&str> = info["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n["name"].as_str().unwrap())
        .collect();
    names.sort();
    assert_eq!(names, ["a", "b", "c"]);

    // Server-side subscribe through node B reaches user0 on node A.
    b.api(
        "subscribe",
        json!({"user": "user0", "channel": "chat:extra"}),
    )
    .await;
    push_of(&mut clients[0], "chat:extra", "subscribe").await;

    // A disconnect through node A's API kicks the connection on node C.
    a.api(
        "disconnect",
        json!({"user": "user2", "disconnect": {"code": 4001, "reason": "bye"}}),
    )
    .await;
    let mut kicked = clients.pop().unwrap();
    assert_eq!(kicked.closed().await, (4001, "bye".to_string()));
    // Its presence entry leaves with it.
    eventually("presence without the kicked client", || async {
        let s = a
            .api("presence_stats", json!({"channel": "room:lobby"}))
            .await;
        s["num_clients"] == 2
    })
    .await;

    // Unsubscribe through node C's API ends user1's subscription on node B.
    c.api(
        "unsubscribe",
        json!({"user": "user1", "channel": "room:lobby"}),
    )
    .await;
    let push = push_of(&mut clients[1], "room:lobby", "unsubscribe").await;
    assert_eq!(push["unsubscribe"]["code"], 2000, "{push}");

    // A dead node drops out of info within a few announcement intervals.
    let mut nodes = nodes;
    let dead = nodes.pop().unwrap();
    drop(dead);
    nodes_in_info(&nodes[0], 2).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_streams_keep_one_order_under_publishers_on_every_node() {
    // The `hist` namespace keeps 100 publications: 3 × 30 fit.
    let Some(url) = env_url("HERALD_TEST_REDIS_URL") else {
        return;
    };
    let cfg = redis_engine(&url, &unique("t"));
    let nodes: Vec<ClusterNode> = ["a", "b", "c"].iter().map(|n| node(n, &cfg)).collect();
    let mut watcher = nodes[1].client("watcher").await;
    let sub = subscribe(&mut watcher, "hist:race").await;
    let epoch = sub["epoch"].as_str().unwrap().to_string();

    const EACH: usize = 30;
    publish_from_every_node(&nodes, "hist:race", EACH).await;
    let (got, resubscribes) =
        collect_recovering(&mut watcher, "hist:race", 3 * EACH, 0, epoch).await;
    assert_eq!(got.len(), 3 * EACH);
    // Redis assigns offsets and publishes in one step: nothing to recover.
    assert_eq!(resubscribes, 0);
    // Per publisher, order is kept.
    for i in 0..3 {
        let seq: Vec<u64> = got
            .iter()
            .filter(|d| d["node"] == i)
            .map(|d| d["n"].as_u64().unwrap())
            .collect();
        assert_eq!(seq, (0..EACH as u64).collect::<Vec<_>>());
    }
    // Every node reads the same continuous stream.
    for node in &nodes {
        let (offsets, epoch) = history(node, "hist:race").await;
        assert_eq!(offsets, (1..=(3 * EACH) as u64).collect::<Vec<_>>());
        assert_eq!(epoch, sub["epoch"]);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_restart_mid_stream_recovers_durable_streams() {
    let Some(pg) = env_url("HERALD_TEST_POSTGRES_URL") else {
        return;
    };
    let Some((redis, url)) = own_redis() else {
        return;
    };
    let db = TestDatabase::create_at(&pg);
    let mut cfg = redis_engine(&url, "restart");
    merge(&mut cfg, durable_namespace(&db));
    broker_restart(redis, cfg, true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_restart_mid_stream_recovers_persisted_redis_streams() {
    let dir = tempfile::tempdir().unwrap();
    let dir_arg = dir.path().display().to_string();
    let Some(redis) = OwnServer::start("redis-server", |port| {
        redis_args(
            port,
            &[
                "--dir",
                &dir_arg,
                "--appendonly",
                "yes",
                "--appendfsync",
                "always",
            ],
        )
    }) else {
        return;
    };
    let cfg = redis_engine(&format!("redis://127.0.0.1:{}", redis.port), "restart");
    broker_restart(redis, cfg, false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn channels_shard_across_several_redis_servers() {
    let dirs: Vec<tempfile::TempDir> = (0..2).map(|_| tempfile::tempdir().unwrap()).collect();
    let mut servers = Vec::new();
    for dir in &dirs {
        let dir_arg = dir.path().display().to_string();
        let Some(s) = OwnServer::start("redis-server", |port| {
            redis_args(port, &["--dir", &dir_arg])
        }) else {
            return;
        };
        servers.push(s);
    }
    let addresses: Vec<String> = servers
        .iter()
        .map(|s| format!("127.0.0.1:{}", s.port))
        .collect();
    let cfg =
        json!({ "engine": { "type": "redis", "redis": { "address": addresses, "prefix": "sh" } } });
    let nodes: Vec<ClusterNode> = ["a", "b"].iter().map(|n| node(n, &cfg)).collect();
    let mut ws = nodes[0].client("u").await;
    const CHANNELS: usize = 12;
    for i in 0..CHANNELS {
        subscribe(&mut ws, &format!("hist:c{i}")).await;
    }
    for i in 0..CHANNELS {
        nodes[1]
            .api(
                "publish",
                json!({"channel": format!("hist:c{i}"), "data": i}),
            )
            .await;
        let p = next_pub(&mut ws, &format!("hist:c{i}")).await;
        assert_eq!(
            (p["data"].clone(), p["offset"].clone()),
            (json!(i), json!(1))
        );
    }
    // Both servers hold some of the streams.
    for s in &servers {
        let out = Command::new("redis-cli")
            .args([
                "-p",
                &s.port.to_string(),
                "--scan",
                "--pattern",
                "sh.meta.*",
            ])
            .output()
            .expect("redis-cli runs");
        let keys = String::from_utf8_lossy(&out.stdout).lines().count();
        assert!(
            keys > 0 && keys < CHANNELS,
            "{keys} of {CHANNELS} streams on port {}",
            s.port
        );
    }
    // Node announcements and commands use the first server.
    nodes_in_info(&nodes[1], 2).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shared_presence_drops_thousands_of_expired_entries() {
    use herald::config::{Dur, RedisConfig};
    use herald::presence::{RedisPresence, SharedPresence};
    use herald::redis_link::RedisShards;

    let Some(url) = env_url("HERALD_TEST_REDIS_URL") else {
        return;
    };
    let cfg = RedisConfig {
        address: url,
        prefix: unique("t"),
        ..Default::default()
    };
    let shards = RedisShards::connect(&cfg).await.expect("redis");
    // A node that died with 9,000 clients in a channel: its entries expire
    // while another node keeps the channel's keys alive.
    let dead = RedisPresence::new(shards.clone(), Dur::secs(1).0);
    let alive = RedisPresence::new(shards, Dur::secs(60).0);
    let info = |i: usize| herald_protocol::ClientInfo {
        user: format!("u{i}"),
        client: format!("c{i}"),
        ..Default::default()
    };
    let infos: Vec<_> = (0..9000).map(info).collect();
    let added = futures_util::future::join_all(infos.iter().map(|i| dead.add("room:big", i))).await;
    assert!(added.iter().all(Result::is_ok));
    alive.add("room:big", &info(99_999)).await.unwrap();
    tokio::time::sleep(Duration::from_millis(2100)).await;
    let present = alive.get("room:big").await.expect("presence read succeeds");
    assert_eq!(present.keys().collect::<Vec<_>>(), ["c99999"]);
}

/// A private `redis-server` that keeps nothing on disk, and its URL.
pub(crate) fn own_redis() -> Option<(OwnServer, String)> {
    let redis = OwnServer::start("redis-server", |port| {
        redis_args(port, &["--appendonly", "no"])
    })?;
    let url = format!("redis://127.0.0.1:{}", redis.port);
    Some((redis, url))
}

/// Arguments of a private `redis-server` on `port` that keeps nothing on
/// disk unless `extra` says otherwise.
fn redis_args(port: u16, extra: &[&str]) -> Vec<String> {
    let mut args: Vec<String> = [
        "--port",
        &port.to_string(),
        "--bind",
        "127.0.0.1",
        "--save",
        "",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    args.extend(extra.iter().map(|s| s.to_string()));
    args
}

/// How many connections are subscribed to a Redis pub/sub channel.
fn numsub(url: &str, key: &str) -> u64 {
    let out = Command::new("redis-cli")
        .args(["-u", url, "PUBSUB", "NUMSUB", key])
        .output()
        .expect("redis-cli runs");
    let text = String::from_utf8_lossy(&out.stdout);
    text.lines()
        .nth(1)
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or_else(|| panic!("{text}"))
}

/// Reading streams that were never published to leaves nothing in Redis
/// but the shard's seed, and each is reported in the epoch its first
/// publication then creates it in.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reading_redis_streams_that_do_not_exist_creates_nothing() {
    let Some(url) = env_url("HERALD_TEST_REDIS_URL") else {
        return;
    };
    let prefix = unique("t");
    let node = node("a", &redis_engine(&url, &prefix));
    let mut epochs = Vec::new();
    for i in 0..50 {
        let h = node
            .api("history", json!({"channel": format!("hist:never{i}")}))
            .await;
        assert_eq!(h["offset"], 0, "{h}");
        epochs.push(h["epoch"].as_str().expect("an epoch").to_string());
    }
    let keys = |pattern: &str| {
        let out = Command::new("redis-cli")
            .args(["-u", &url, "--scan", "--pattern", pattern])
            .output()
            .expect("redis-cli runs");
        String::from_utf8_lossy(&out.stdout).lines().count()
    };
    assert_eq!(keys(&format!("{prefix}.meta.*")), 0, "no stream state");
    let r = node
        .api("publish", json!({"channel": "hist:never3", "data": 1}))
        .await;
    assert_eq!(r["epoch"], epochs[3], "{r}");
    assert_eq!(keys(&format!("{prefix}.meta.*")), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_idempotency_keys_hold_across_nodes() {
    let Some(url) = env_url("HERALD_TEST_REDIS_URL") else {
        return;
    };
    let cfg = redis_engine(&url, &unique("t"));
    idempotency_holds_across_nodes(cfg, &["hist:once", "chat:once"]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_deltas_cross_nodes() {
    let Some(url) = env_url("HERALD_TEST_REDIS_URL") else {
        return;
    };
    deltas_cross_nodes(redis_engine(&url, &unique("t")), false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_versions_hold_across_nodes() {
    let Some(url) = env_url("HERALD_TEST_REDIS_URL") else {
        return;
    };
    versions_hold_across_nodes(redis_engine(&url, &unique("t")), "hist:ver").await;
}

/// A Redis engine with storage in a PostgreSQL database of the test's own
/// (dropped with the second value), when both services are there.
fn redis_with_postgres() -> Option<(Value, TestDatabase)> {
    let (Some(url), Some(pg)) = (
        env_url("HERALD_TEST_REDIS_URL"),
        env_url("HERALD_TEST_POSTGRES_URL"),
    ) else {
        return None;
    };
    let db = TestDatabase::create_at(&pg);
    let mut cfg = redis_engine(&url, &unique("t"));
    merge(
        &mut cfg,
        json!({ "storage": { "type": "postgres", "postgres": { "url": db.url } } }),
    );
    Some((cfg, db))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_blocks_and_revocations_reach_every_node_and_persist() {
    let Some((mut cfg, _db)) = redis_with_postgres() else {
        return;
    };
    merge(
        &mut cfg,
        json!({
            "user_block": { "storage_type": "database" },
            "token_revoke": { "storage_type": "database" }
        }),
    );
    access_holds_across_nodes(cfg, true).await;
}

/// `/health` reports the broker, the presence store and durable storage:
/// 200 while all answer, 503 naming the one that does not while Redis is
/// stopped or the database is gone, 200 again once Redis is back; liveness
/// stays 200 throughout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_follows_redis_and_postgres() {
    let Some(pg) = env_url("HERALD_TEST_POSTGRES_URL") else {
        return;
    };
    let Some((mut redis, url)) = own_redis() else {
        return;
    };
    let db = TestDatabase::create_at(&pg);
    let mut cfg = redis_engine(&url, &unique("h"));
    merge(&mut cfg, durable_namespace(&db));
    let node = node("a", &cfg);
    let (status, h) = node.get("/health").await;
    assert_eq!(status, 200, "{h}");
    for (check, kind) in [
        ("broker", "redis"),
        ("presence", "redis"),
        ("storage", "postgres"),
    ] {
        assert_eq!(
            h["checks"][check],
            json!({"status": "ok", "type": kind}),
            "{h}"
        );
    }

    redis.stop();
    eventually("503 while Redis is down", || async {
        let (status, h) = node.get("/health").await;
        status == 503
            && h["status"] == "unavailable"
            && h["checks"]["broker"]["status"] == "unavailable"
            && h["checks"]["broker"]["error"].is_string()
            && h["checks"]["storage"]["status"] == "ok"
    })
    .await;
    assert_eq!(node.get("/health/live").await.0, 200);
    redis.restart();
    eventually("200 once Redis is back", || async {
        node.get("/health").await.0 == 200
    })
    .await;

    drop(db);
    eventually("503 once the database is gone", || async {
        let (status, h) = node.get("/health").await;
        status == 503 && h["checks"]["storage"]["status"] == "unavailable"
    })
    .await;
}

/// Webhooks in a cluster (Redis broker, PostgreSQL storage): a user with
/// connections on both nodes is online once and offline once, a channel
/// with subscribers on both is occupied and vacated once, and every event
/// is delivered once, whichever node records or sends it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webhooks_count_a_user_once_across_nodes_and_deliver_each_event_once() {
    let Some((mut cfg, _db)) = redis_with_postgres() else {
        return;
    };
    let receiver = herald_testkit::Receiver::start().await;
    merge(
        &mut cfg,
        json!({ "webhooks": [{ "name": "app", "url": receiver.url(), "secret": "s" }] }),
    );
    let nodes: Vec<ClusterNode> = ["a", "b"].iter().map(|n| node(n, &cfg)).collect();
    let mut clients = Vec::new();
    for _ in 0..2 {
        for n in &nodes {
            let mut ws = n.client("dora").await;
            subscribe(&mut ws, "chat:both").await;
            clients.push(ws);
        }
    }
    eventually("4 subscribe events", || async {
        receiver.of("subscribe").len() >= 4
    })
    .await;
    for ws in clients {
        ws.close().await;
    }
    eventually("dora offline", || async {
        !receiver.of("user_offline").is_empty()
    })
    .await;
    eventually("4 disconnects", || async {
        receiver.of("disconnect").len() >= 4
    })
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let got = receiver.all();
    let n = |e: &str| got.iter().filter(|r| r.event() == e).count();
    assert_eq!(
        [
            n("connect"),
            n("user_online"),
            n("user_offline"),
            n("channel_occupied"),
            n("channel_vacated")
        ],
        [4, 1, 1, 1, 1],
        "{got:?}"
    );
    let ids: std::collections::HashSet<&str> =
        got.iter().filter_map(|r| r.body["id"].as_str()).collect();
    assert_eq!(ids.len(), got.len(), "each event delivered once");
    let nodes_seen: std::collections::HashSet<&str> =
        got.iter().filter_map(|r| r.body["node"].as_str()).collect();
    assert_eq!(
        nodes_seen.len(),
        2,
        "both nodes recorded events: {nodes_seen:?}"
    );
}

/// Adds Pusher app `1` (key `k`, secret `s`, namespace `pa`) with `extra`
/// to `cfg`.
fn with_pusher_app(cfg: &mut Value, extra: Value) {
    let mut namespaces = herald_testkit::base_config()["channel"]["namespaces"].clone();
    namespaces
        .as_array_mut()
        .unwrap()
        .push(json!({"name": "pa"}));
    let mut app = json!({"id": "1", "key": "k", "secret": "s", "namespace": "pa"});
    merge(&mut app, extra);
    merge(
        cfg,
        json!({"channel": {"namespaces": namespaces}, "pusher": {"apps": [app]}}),
    );
}

/// A socket of Pusher app `k` on node `n`, and its socket id.
async fn pusher_open(n: &ClusterNode) -> (Ws, String) {
    let url = n
        .ws_url()
        .replace("/connection/websocket", "/app/k?protocol=7");
    let mut ws = Ws::open(&url).await;
    let (event, _, data) = herald_testkit::pusher_message(&mut ws).await;
    assert_eq!(event, "pusher:connection_established");
    (ws, data["socket_id"].as_str().unwrap().to_string())
}

/// Asks to join `presence-room` as `user`.
async fn pusher_join(ws: &mut Ws, id: &str, user: &str) {
    let data = json!({"user_id": user}).to_string();
    let auth = herald_testkit::pusher_auth("k", "s", &format!("{id}:presence-room:{data}"));
    let m = json!({"event": "pusher:subscribe", "data": {
        "channel": "presence-room", "auth": auth, "channel_data": data}});
    ws.send_text(&m.to_string()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pusher_sockets_on_two_nodes_share_channels_and_presence() {
    use herald_testkit::{pusher_message, pusher_signed};
    let Some(url) = env_url("HERALD_TEST_REDIS_URL") else {
        return;
    };
    let mut cfg = redis_engine(&url, &unique("t"));
    with_pusher_app(&mut cfg, json!({}));
    let nodes: Vec<ClusterNode> = ["a", "b"].iter().map(|n| node(n, &cfg)).collect();
    nodes_in_info(&nodes[0], 2).await;
    // Bob on node b, then Ann on node a: she sees him, he sees her come.
    let (mut bob, bob_id) = pusher_open(&nodes[1]).await;
    pusher_join(&mut bob, &bob_id, "bob").await;
    let (event, _, data) = pusher_message(&mut bob).await;
    assert_eq!(event, "pusher_internal:subscription_succeeded");
    assert_eq!(data["presence"]["count"], 1);
    let (mut ann, ann_id) = pusher_open(&nodes[0]).await;
    pusher_join(&mut ann, &ann_id, "ann").await;
    let (event, _, data) = pusher_message(&mut ann).await;
    assert_eq!(event, "pusher_internal:subscription_succeeded");
    assert_eq!(data["presence"]["ids"], json!(["ann", "bob"]), "{data}");
    let (event, _, data) = pusher_message(&mut bob).await;
    assert_eq!(event, "pusher_internal:member_added");
    assert_eq!(data["user_id"], "ann");

    // An event triggered through node b's HTTP API reaches Ann on node a.
    let body = json!({"name": "hello", "channel": "presence-room", "data": "{\"from\":\"b\"}"})
        .to_string();
    let path = pusher_signed(
        "POST",
        "/apps/1/events",
        &body,
        "k",
        "s",
        herald_testkit::now(),
    );
    let base = nodes[1]
        .ws_url()
        .replace("ws://", "http://")
        .replace("/connection/websocket", "");
    let r = reqwest::Client::new()
        .post(format!("{base}{path}"))
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    let (event, _, data) = pusher_message(&mut ann).await;
    assert_eq!((event.as_str(), &data), ("hello", &json!({"from": "b"})));
}

/// A Pusher app's webhooks in a cluster (Redis broker, PostgreSQL
/// storage): a user with sockets on both nodes is added and removed once,
/// the channel occupied and vacated once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pusher_webhooks_count_members_once_across_nodes() {
    let Some((mut cfg, _db)) = redis_with_postgres() else {
        return;
    };
    let receiver = herald_testkit::Receiver::start().await;
    with_pusher_app(&mut cfg, json!({"webhooks": [{"url": receiver.url()}]}));
    let nodes: Vec<ClusterNode> = ["a", "b"].iter().map(|n| node(n, &cfg)).collect();
    let mut sockets = Vec::new();
    for (n, user) in [(0, "ann"), (1, "ann"), (1, "bob")] {
        let (mut ws, id) = pusher_open(&nodes[n]).await;
        pusher_join(&mut ws, &id, user).await;
        let (event, _, _) = herald_testkit::pusher_message(&mut ws).await;
        assert_eq!(event, "pusher_internal:subscription_succeeded");
        sockets.push(ws);
    }
    eventually("both members added", || async {
        receiver.of("member_added").len() >= 2
    })
    .await;
    for ws in sockets {
        ws.close().await;
    }
    eventually("members removed and the channel vacated", || async {
        receiver.of("channel_vacated").len() == 1 && receiver.of("member_removed").len() == 2
    })
    .await;
    let got = receiver.all();
    let of = |name: &str| -> Vec<String> {
        let mut users: Vec<String> = got
            .iter()
            .filter(|r| r.event() == name)
            .map(|r| {
                r.body["events"][0]["user_id"]
                    .as_str()
                    .unwrap_or("")
                    .to_string()
            })
            .collect();
        users.sort();
        users
    };
    assert_eq!(of("member_added"), ["ann", "bob"], "{got:?}");
    assert_eq!(of("member_removed"), ["ann", "bob"], "{got:?}");
    assert_eq!(of("channel_occupied").len(), 1, "{got:?}");
    assert_eq!(of("channel_vacated").len(), 1, "{got:?}");
}

/// An emulated connection on node a takes commands posted to node b's
/// emulation endpoint: b hands them on through the broker to the session.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn emulation_requests_reach_a_session_on_another_node() {
    let Some(url) = env_url("HERALD_TEST_REDIS_URL") else {
        return;
    };
    let mut cfg = redis_engine(&url, &unique("t"));
    merge(&mut cfg, json!({"http_stream": {"enabled": true}}));
    let nodes: Vec<ClusterNode> = ["a", "b"].iter().map(|n| node(n, &cfg)).collect();
    nodes_in_info(&nodes[1], 2).await;
    let base = |n: &ClusterNode| {
        n.ws_url()
            .replace("ws://", "http://")
            .replace("/connection/websocket", "")
    };
    let http = reqwest::Client::new();
    let connect =
        json!({"id": 1, "connect": {"token": herald_testkit::token(json!({"sub": "emu"}))}});
    let post = http
        .post(format!("{}/connection/http_stream", base(&nodes[0])))
        .body(connect.to_string());
    let mut stream = herald_testkit::Pushes::open(post, b"\n").await;
    let result = stream.next().await.unwrap()["connect"].clone();
    let command = json!({"id": 2, "subscribe": {"channel": "chat:emu"}});
    let request = json!({"session": result["session"], "node": result["node"],
                         "data": command.to_string()});
    let r = http
        .post(format!("{}/emulation", base(&nodes[1])))
        .body(request.to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 204);
    loop {
        let m = stream.next().await.unwrap();
        if m["id"] == 2 {
            assert!(m.get("subscribe").is_some(), "{m}");
            break;
        }
    }
    nodes[1]
        .api(
            "publish",
            json!({"channel": "chat:emu", "data": {"via": "b"}}),
        )
        .await;
    loop {
        let m = stream.next().await.unwrap();
        if let Some(p) = m.get("push") {
            assert_eq!(p["pub"]["data"], json!({"via": "b"}), "{m}");
            break;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_channels_are_counted_across_nodes() {
    let Some(url) = env_url("HERALD_TEST_REDIS_URL") else {
        return;
    };
    channels_counted_across_nodes(redis_engine(&url, &unique("t"))).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_watchlists_see_every_node() {
    let Some(url) = env_url("HERALD_TEST_REDIS_URL") else {
        return;
    };
    watchlists_across_nodes(redis_engine(&url, &unique("t"))).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_watched_users_of_a_killed_node_go_offline() {
    let Some(url) = env_url("HERALD_TEST_REDIS_URL") else {
        return;
    };
    watched_users_of_a_killed_node_go_offline(redis_engine(&url, &unique("t"))).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_leaves_reach_the_others_when_a_node_stops() {
    let Some(url) = env_url("HERALD_TEST_REDIS_URL") else {
        return;
    };
    leaves_reach_the_others_when_a_node_stops(redis_engine(&url, &unique("t"))).await;
}
