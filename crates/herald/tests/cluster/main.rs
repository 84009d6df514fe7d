//! Three `herald` processes on different ports forming one cluster over the
//! real Redis, NATS and PostgreSQL servers named by `HERALD_TEST_REDIS_URL`,
//! `HERALD_TEST_NATS_URL` and `HERALD_TEST_POSTGRES_URL` (a test whose
//! service is not configured says so and passes). Every test uses its own
//! key prefix, subject prefix and database. The broker-restart tests start
//! their own `redis-server` / `nats-server` on a port of their own, so that
//! they can stop and restart it. One module per backend, one for faults
//! (dropped pub/sub connections; a node, Redis or NATS paused) and one for
//! shutdown; what they share is here.

mod faults;
mod nats;
mod pusher;
mod redis;
mod shutdown;

use pusher::{
    channels_counted_across_nodes, watched_users_of_a_killed_node_go_offline,
    watchlists_across_nodes,
};
use shutdown::leaves_reach_the_others_when_a_node_stops;

use std::path::Path;
use std::time::{Duration, Instant};

use herald_testkit::{eventually, ClusterNode, Event, OwnServer, TestDatabase, Ws};
use serde_json::{json, Value};

/// Starts node `name` of a test cluster with `patch` over the base config.
fn node(name: &str, patch: &Value) -> ClusterNode {
    ClusterNode::start(env!("CARGO_BIN_EXE_herald"), name, patch)
}

/// Subscribes and waits for the reply.
async fn subscribe(ws: &mut Ws, channel: &str) -> Value {
    let reply = ws.cmd(json!({"subscribe": {"channel": channel}})).await;
    assert!(reply.get("subscribe").is_some(), "{reply}");
    reply["subscribe"].clone()
}

/// The next publication push in `channel`, skipping other pushes.
async fn next_pub(ws: &mut Ws, channel: &str) -> Value {
    loop {
        let push = ws.push().await;
        if push["channel"] == channel && push.get("pub").is_some() {
            return push["pub"].clone();
        }
    }
}

/// Waits until `node`'s `info` lists `count` nodes.
async fn nodes_in_info(node: &ClusterNode, count: usize) {
    eventually(&format!("{count} nodes in info"), || async {
        let info = node.api("info", json!({})).await;
        info["nodes"].as_array().map(Vec::len) == Some(count)
    })
    .await;
}

/// The offsets of a channel's whole history through `node`'s API, and its
/// epoch.
async fn history(node: &ClusterNode, channel: &str) -> (Vec<u64>, Value) {
    let h = node
        .api("history", json!({"channel": channel, "limit": -1}))
        .await;
    let offsets = h["publications"]
        .as_array()
        .expect("publications")
        .iter()
        .map(|p| p["offset"].as_u64().expect("offset"))
        .collect();
    (offsets, h["epoch"].clone())
}

/// Publishes `{"node": i, "n": n}` for n in 0..each through every node's
/// API at once, node i publishing sequentially; every one acknowledged.
async fn publish_from_every_node(nodes: &[ClusterNode], channel: &str, each: usize) {
    futures_util::future::join_all(nodes.iter().enumerate().map(|(i, node)| async move {
        for n in 0..each {
            node.api(
                "publish",
                json!({"channel": channel, "data": {"node": i, "n": n}}),
            )
            .await;
        }
    }))
    .await;
}

/// The next push about `channel` carrying `kind` (e.g. `subscribe`).
async fn push_of(ws: &mut Ws, channel: &str, kind: &str) -> Value {
    loop {
        let push = ws.push().await;
        if push["channel"] == channel && push.get(kind).is_some() {
            return push;
        }
    }
}

/// Collects `count` publications of a recoverable channel from a client
/// that resubscribes with recovery whenever the server says its state is
/// insufficient (broker reconnected, or offsets the stream could not
/// fill); asserts offsets stay gap-free. Returns the data and how many
/// times the client had to resubscribe.
async fn collect_recovering(
    ws: &mut Ws,
    channel: &str,
    count: usize,
    mut offset: u64,
    mut epoch: String,
) -> (Vec<Value>, usize) {
    let mut got = Vec::new();
    let mut resubscribes = 0;
    while got.len() < count {
        let push = match ws.next().await {
            Event::Msg(m) if m.get("push").is_some() => m["push"].clone(),
            Event::Msg(_) => continue,
            Event::Closed(c) => panic!("closed while collecting: {c:?}"),
        };
        if push["channel"] != channel {
            continue;
        }
        if let Some(p) = push.get("pub") {
            let o = p["offset"].as_u64().expect("offset");
            assert_eq!(o, offset + 1, "publication skipped after {offset}");
            offset = o;
            got.push(p["data"].clone());
        } else if let Some(u) = push.get("unsubscribe") {
            assert_eq!(u["code"], 2500, "{push}");
            resubscribes += 1;
            assert!(resubscribes < 50, "resubscribing forever");
            let reply = ws
                .cmd(json!({"subscribe": {"channel": channel, "recover": true, "offset": offset, "epoch": epoch}}))
                .await;
            let r = &reply["subscribe"];
            assert_eq!(r["recovered"], true, "not recovered: {reply}");
            epoch = r["epoch"].as_str().unwrap().to_string();
            for p in r["publications"].as_array().cloned().unwrap_or_default() {
                let o = p["offset"].as_u64().unwrap();
                assert_eq!(o, offset + 1, "recovery skipped after {offset}");
                offset = o;
                got.push(p["data"].clone());
            }
        }
    }
    (got, resubscribes)
}

pub(crate) fn redis_engine(url: &str, prefix: &str) -> Value {
    json!({ "engine": { "type": "redis", "redis": { "address": url, "prefix": prefix } } })
}

fn durable_namespace(db: &TestDatabase) -> Value {
    json!({
        "storage": { "type": "postgres", "postgres": { "url": db.url } },
        "channel": { "namespaces": [
            { "name": "chat", "allow_subscribe_for_client": true, "allow_publish_for_subscriber": true },
            { "name": "log", "history_storage": "durable", "history_size": 0, "history_ttl": "0s",
              "force_recovery": true, "allow_subscribe_for_client": true }
        ] }
    })
}

/// A node's broker connections are health-checked every `io_timeout`
/// (200 ms in `cfg`); healthy ones must never be dropped (each drop loses
/// publications in flight).
async fn connections_stay_up_across_health_checks(cfg: Value) {
    let node = node("a", &cfg);
    let mut ws = node.client("u").await;
    subscribe(&mut ws, "chat:quiet").await;
    // Time must pass here, not an event: several health checks, during
    // which nothing may happen.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    node.api("publish", json!({"channel": "chat:quiet", "data": 1}))
        .await;
    assert_eq!(next_pub(&mut ws, "chat:quiet").await["data"], 1);
    assert_eq!(
        node.metric("herald_broker_reconnects_total").await,
        0,
        "{cfg}"
    );
}

/// Publishes `data` through `node` until it is acknowledged, counting the
/// failures (which must come quickly, not hang).
async fn publish_acknowledged(node: &ClusterNode, channel: &str, data: Value) -> usize {
    let mut failures = 0;
    loop {
        let started = Instant::now();
        let (status, reply) = node
            .api_raw("publish", json!({"channel": channel, "data": data}))
            .await;
        if status == 200 && reply.get("error").is_none() {
            return failures;
        }
        assert!(
            started.elapsed() < Duration::from_secs(6),
            "a failing publish took {:?}",
            started.elapsed()
        );
        failures += 1;
        assert!(failures < 200, "publishes keep failing: {reply}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The broker goes away mid-stream and comes back: nodes reconnect,
/// subscribers recover everything that was acknowledged.
async fn broker_restart(mut broker: OwnServer, cfg: Value, durable: bool) {
    let nodes: Vec<ClusterNode> = ["a", "b"].iter().map(|n| node(n, &cfg)).collect();
    let channel = if durable { "log:live" } else { "hist:live" };
    let mut watcher = nodes[1].client("watcher").await;
    let sub = subscribe(&mut watcher, channel).await;
    let epoch = sub["epoch"].as_str().unwrap().to_string();
    let mut late = None;
    const TOTAL: usize = 60;
    for n in 0..TOTAL {
        if n == 20 {
            broker.stop();
            // While the broker is down a publish answers quickly: durable
            // ones are committed (subscribers recover them later), others
            // fail with an error.
            let started = Instant::now();
            let (status, reply) = nodes[0]
                .api_raw("publish", json!({"channel": channel, "data": {"n": n}}))
                .await;
            assert!(
                started.elapsed() < Duration::from_secs(6),
                "{:?}",
                started.elapsed()
            );
            if durable {
                assert_eq!(status, 200, "{reply}");
                assert!(reply.get("error").is_none(), "{reply}");
                continue;
            }
            assert!(status != 200 || reply.get("error").is_some(), "{reply}");
            assert!(reply.to_string().contains("broker unavailable"), "{reply}");
            // Restarted only once both nodes saw it go.
            tokio::task::block_in_place(|| {
                for node in &nodes {
                    node.logged("connection lost");
                }
            });
            broker.restart();
        }
        if n == 30 {
            // A second subscriber joins the same node mid-stream.
            let mut ws = nodes[1].client("late").await;
            let s = subscribe(&mut ws, channel).await;
            late = Some((ws, s));
        }
        if n == 40 && durable {
            broker.restart();
        }
        // Publishers on both nodes.
        publish_acknowledged(&nodes[n % 2], channel, json!({"n": n})).await;
    }
    let (got, resubscribes) = collect_recovering(&mut watcher, channel, TOTAL, 0, epoch).await;
    assert!(
        resubscribes > 0,
        "the reconnection did not make subscribers recover"
    );
    let seq: Vec<u64> = got.iter().map(|d| d["n"].as_u64().unwrap()).collect();
    assert_eq!(seq, (0..TOTAL as u64).collect::<Vec<_>>());

    let (mut ws, s) = late.unwrap();
    let from = s["offset"].as_u64().unwrap();
    let epoch = s["epoch"].as_str().unwrap().to_string();
    let (got, _) = collect_recovering(&mut ws, channel, TOTAL - from as usize, from, epoch).await;
    let seq: Vec<u64> = got.iter().map(|d| d["n"].as_u64().unwrap()).collect();
    assert_eq!(seq, (from..TOTAL as u64).collect::<Vec<_>>());

    // Each node noticed the one reconnection once: a second report would
    // send every subscriber with a position to recover again for nothing.
    for node in &nodes {
        assert_eq!(node.restorations(Duration::from_secs(1)), 1);
    }
}

/// Publishes with one idempotency key through two nodes, one after the
/// other and then at once: each channel gets one publication per key, and
/// every publish its result.
async fn idempotency_holds_across_nodes(cfg: Value, channels: &[&str]) {
    let nodes: Vec<ClusterNode> = ["a", "b"].iter().map(|n| node(n, &cfg)).collect();
    let mut ws = nodes[1].client("watcher").await;
    for channel in channels {
        subscribe(&mut ws, channel).await;
    }
    for channel in channels {
        let publish = |n: u64, key: &str| json!({"channel": channel, "data": {"n": n}, "idempotency_key": key});
        let first = nodes[0].api("publish", publish(1, "k")).await;
        let retry = nodes[1].api("publish", publish(2, "k")).await;
        assert_eq!(first, retry, "{channel}");
        let together = futures_util::future::join_all(
            (0..6u64).map(|n| nodes[n as usize % 2].api("publish", publish(10 + n, "t"))),
        )
        .await;
        assert!(
            together.iter().all(|r| *r == together[0]),
            "{channel}: {together:?}"
        );
        nodes[0]
            .api("publish", json!({"channel": channel, "data": "end"}))
            .await;
        assert_eq!(next_pub(&mut ws, channel).await["data"]["n"], 1);
        let n = next_pub(&mut ws, channel).await["data"]["n"]
            .as_u64()
            .unwrap();
        assert!((10..16).contains(&n), "{channel}: {n}");
        assert_eq!(
            next_pub(&mut ws, channel).await["data"],
            "end",
            "{channel}: once per key"
        );
    }
}

/// Versions hold across nodes: a publication through one node whose version
/// is not above the last one published through another is dropped.
async fn versions_hold_across_nodes(cfg: Value, channel: &str) {
    let nodes: Vec<ClusterNode> = ["a", "b"].iter().map(|n| node(n, &cfg)).collect();
    let mut ws = nodes[1].client("watcher").await;
    subscribe(&mut ws, channel).await;
    let publish =
        |n: u64, version: u64| json!({"channel": channel, "data": {"n": n}, "version": version});
    let first = nodes[0].api("publish", publish(1, 5)).await;
    let stale = nodes[1].api("publish", publish(2, 4)).await;
    assert_eq!(first["offset"], stale["offset"], "{first} {stale}");
    let newer = nodes[1].api("publish", publish(3, 6)).await;
    assert_eq!(
        newer["offset"],
        first["offset"].as_u64().unwrap() + 1,
        "{newer}"
    );
    assert_eq!(next_pub(&mut ws, channel).await["data"]["n"], 1);
    assert_eq!(next_pub(&mut ws, channel).await["data"]["n"], 3);
}

#[test]
fn example_cluster_configs_load() {
    for file in ["cluster-redis.toml", "cluster-nats.toml"] {
        let path = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../../examples")
            .join(file);
        let loaded = herald::config::load(
            Some(&path),
            &Default::default(),
            &herald::config::Overrides::default(),
        )
        .unwrap_or_else(|e| panic!("{file}: {e}"));
        assert!(loaded.config.is_cluster(), "{file}");
    }
}

/// User blocks and token revocations made through one node act on every
/// node's connections; with the rules kept in the database (`persisted`),
/// a node started afterwards refuses the blocked user too.
async fn access_holds_across_nodes(cfg: Value, persisted: bool) {
    let nodes: Vec<ClusterNode> = ["a", "b"].iter().map(|n| node(n, &cfg)).collect();
    nodes_in_info(&nodes[0], 2).await;
    let mut bob = nodes[1].client("bob").await;
    let mut leaked = Ws::open(&nodes[1].ws_url()).await;
    let claims = json!({"sub": "u", "jti": "leaked"});
    let r = leaked
        .cmd(json!({"connect": {"token": herald_testkit::token(claims.clone())}}))
        .await;
    assert!(r.get("connect").is_some(), "{r}");

    let r = nodes[0].api("block_user", json!({"user": "bob"})).await;
    assert!(r.get("error").is_none(), "{r}");
    assert_eq!(bob.closed().await.0, 3503);
    let r = nodes[0].api("revoke_token", json!({"uid": "leaked"})).await;
    assert!(r.get("error").is_none(), "{r}");
    assert_eq!(leaked.closed().await.0, 3500);

    if persisted {
        let late = node("c", &cfg);
        for (claims, code) in [(json!({"sub": "bob"}), 3503), (claims, 3500)] {
            let mut ws = Ws::open(&late.ws_url()).await;
            ws.send(json!({"connect": {"token": herald_testkit::token(claims)}}))
                .await;
            assert_eq!(ws.closed().await.0, code);
        }
    }
}

/// Delta compression across nodes: publications through one node reach a
/// delta subscriber on the other as deltas it can rebuild every payload
/// from (the publisher's allowance travels with the publication), while a
/// plain subscriber there gets plain JSON. `cfg`'s storage backs a
/// positioned namespace `dl` added here (durable when `durable`).
async fn deltas_cross_nodes(mut cfg: Value, durable: bool) {
    let storage = if durable { "durable" } else { "memory" };
    herald_testkit::merge(
        &mut cfg,
        json!({"channel": {"namespaces": [{
            "name": "dl", "history_size": 100, "history_ttl": "300s", "force_recovery": true,
            "history_storage": storage, "allowed_delta_types": ["fossil"],
            "allow_subscribe_for_client": true
        }]}}),
    );
    let nodes: Vec<ClusterNode> = ["a", "b"].iter().map(|n| node(n, &cfg)).collect();
    let mut d = nodes[1].client("d").await;
    let r = d
        .cmd(json!({"subscribe": {"channel": "dl:x", "delta": "fossil"}}))
        .await;
    assert_eq!(r["subscribe"]["delta"], json!(true), "{r}");
    let mut plain = nodes[1].client("p").await;
    subscribe(&mut plain, "dl:x").await;
    let doc = |n: u64| {
        format!(
            r#"{{"n":{n},"text":"{}"}}"#,
            "the same long text ".repeat(8)
        )
    };
    let mut last: Option<String> = None;
    let mut deltas = 0;
    for n in 1..=4u64 {
        let data: Value = serde_json::from_str(&doc(n)).unwrap();
        let r = nodes[0]
            .api(
                "publish",
                json!({"channel": "dl:x", "data": data, "delta": true}),
            )
            .await;
        assert!(r.get("error").is_none(), "{r}");
        let p = next_pub(&mut d, "dl:x").await;
        let text = p["data"].as_str().expect("a string").to_string();
        let rebuilt = if p["delta"] == json!(true) {
            deltas += 1;
            let base = last.as_ref().expect("a base");
            String::from_utf8(fossil_delta::apply(base.as_bytes(), text.as_bytes()).unwrap())
                .unwrap()
        } else {
            text
        };
        assert_eq!(rebuilt, doc(n));
        last = Some(rebuilt);
        assert_eq!(next_pub(&mut plain, "dl:x").await["data"]["n"], n);
    }
    assert_eq!(deltas, 3, "all but the first");
}
