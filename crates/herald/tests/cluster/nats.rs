//! The cluster over NATS, with streams in PostgreSQL.

use herald_testkit::{env_url, merge, unique, ClusterNode, OwnServer, TestDatabase};
use serde_json::json;

use super::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nats_connections_stay_up_across_health_checks() {
    let (Some(nats), Some(redis)) = (
        env_url("HERALD_TEST_NATS_URL"),
        env_url("HERALD_TEST_REDIS_URL"),
    ) else {
        return;
    };
    connections_stay_up_across_health_checks(json!({
        "broker": { "enabled": true, "type": "nats",
            "nats": { "url": nats, "prefix": unique("t"), "io_timeout": "200ms" } },
        "presence_manager": { "enabled": true, "type": "redis",
            "redis": { "address": redis, "prefix": unique("t"), "io_timeout": "200ms" } },
        "channel": { "namespaces": [
            { "name": "chat", "allow_subscribe_for_client": true }
        ] }
    }))
    .await;
}

/// A NATS-brokered cluster with durable streams in a fresh PostgreSQL
/// database (dropped with it); `None` when either service is not set up.
struct NatsPostgres {
    nats: String,
    prefix: String,
    cfg: serde_json::Value,
    _db: TestDatabase,
}

impl NatsPostgres {
    fn new() -> Option<Self> {
        let nats = env_url("HERALD_TEST_NATS_URL")?;
        let pg = env_url("HERALD_TEST_POSTGRES_URL")?;
        let db = TestDatabase::create_at(&pg);
        let prefix = unique("t");
        let mut cfg = json!({ "broker": { "enabled": true, "type": "nats",
            "nats": { "url": nats, "prefix": prefix } } });
        merge(&mut cfg, durable_namespace(&db));
        Some(Self {
            nats,
            prefix,
            cfg,
            _db: db,
        })
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nats_cluster_with_postgres_streams() {
    let Some(cluster) = NatsPostgres::new() else {
        return;
    };
    let cfg = &cluster.cfg;
    let nodes: Vec<ClusterNode> = ["a", "b", "c"].iter().map(|n| node(n, cfg)).collect();

    // Channel names with NATS wildcard characters neither break nor widen
    // subscriptions.
    let mut exact = nodes[0].client("u1").await;
    let mut star = nodes[2].client("u2").await;
    subscribe(&mut exact, "chat:a.b c").await;
    subscribe(&mut star, "chat:a.*").await;
    subscribe(&mut star, "chat:>").await;
    nodes_in_info(&nodes[1], 3).await;
    nodes[1]
        .api("publish", json!({"channel": "chat:a.b c", "data": "exact"}))
        .await;
    nodes[1]
        .api("publish", json!({"channel": "chat:>", "data": "gt"}))
        .await;
    assert_eq!(next_pub(&mut exact, "chat:a.b c").await["data"], "exact");
    let p = star.push().await;
    assert_eq!(
        (p["channel"].clone(), p["pub"]["data"].clone()),
        (json!("chat:>"), json!("gt"))
    );

    // Durable streams: publishers on every node append to one gap-free
    // stream; a subscriber on another node sees all of it.
    let mut watcher = nodes[1].client("watcher").await;
    let sub = subscribe(&mut watcher, "log:orders").await;
    let epoch = sub["epoch"].as_str().unwrap().to_string();
    const EACH: usize = 30;
    publish_from_every_node(&nodes, "log:orders", EACH).await;
    let (got, resubscribes) =
        collect_recovering(&mut watcher, "log:orders", 3 * EACH, 0, epoch).await;
    assert_eq!(got.len(), 3 * EACH);
    // Publications that overtake each other between nodes are put back in
    // order by the subscriber's node from the stream: clients never notice.
    assert_eq!(resubscribes, 0);
    let filled = nodes[1].metric("herald_stream_gaps_filled_total").await;
    eprintln!("gaps filled on the subscriber's node: {filled}");
    let (offsets, _) = history(&nodes[2], "log:orders").await;
    assert_eq!(offsets, (1..=(3 * EACH) as u64).collect::<Vec<_>>());

    // Disconnect through node A reaches node C over NATS.
    nodes[0]
        .api(
            "disconnect",
            json!({"user": "u2", "disconnect": {"code": 4002, "reason": "out"}}),
        )
        .await;
    assert_eq!(star.closed().await, (4002, "out".to_string()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nats_restart_mid_stream_recovers_durable_streams() {
    let Some((nats, cfg, _db)) = own_nats_with_postgres("restart") else {
        return;
    };
    broker_restart(nats, cfg, true).await;
}

/// A NATS server of the test's own, and a config of nodes on it (subjects
/// under `prefix`) with the durable namespaces in a new PostgreSQL
/// database; `None` where either cannot be had.
pub(crate) fn own_nats_with_postgres(
    prefix: &str,
) -> Option<(OwnServer, serde_json::Value, TestDatabase)> {
    let pg = env_url("HERALD_TEST_POSTGRES_URL")?;
    let nats = own_nats()?;
    let db = TestDatabase::create_at(&pg);
    let url = format!("nats://127.0.0.1:{}", nats.port);
    let mut cfg = json!({ "broker": { "enabled": true, "type": "nats",
        "nats": { "url": url, "prefix": prefix } } });
    merge(&mut cfg, durable_namespace(&db));
    Some((nats, cfg, db))
}

/// Keys of channels without history are kept in NATS's key-value store
/// (the shared server runs JetStream), those of durable ones with the
/// stream.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nats_idempotency_keys_hold_across_nodes() {
    let Some(cluster) = NatsPostgres::new() else {
        return;
    };
    idempotency_holds_across_nodes(cluster.cfg.clone(), &["chat:once", "log:once"]).await;
    // The bucket was made on the shared server: remove it.
    let client = async_nats::connect(&cluster.nats).await.unwrap();
    async_nats::jetstream::new(client)
        .delete_stream(format!("KV_{}_once", cluster.prefix))
        .await
        .expect("the test's bucket was made");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nats_postgres_deltas_cross_nodes() {
    let Some(cluster) = NatsPostgres::new() else {
        return;
    };
    deltas_cross_nodes(cluster.cfg.clone(), true).await;
}

/// Durable streams in PostgreSQL keep versions for every node.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nats_postgres_versions_hold_across_nodes() {
    let Some(cluster) = NatsPostgres::new() else {
        return;
    };
    versions_hold_across_nodes(cluster.cfg.clone(), "log:ver").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nats_blocks_and_revocations_reach_every_node() {
    let Some(nats) = env_url("HERALD_TEST_NATS_URL") else {
        return;
    };
    // Rules kept in memory: only the control messages carry them.
    let cfg = json!({ "broker": { "enabled": true, "type": "nats",
            "nats": { "url": nats, "prefix": unique("t") } },
        "channel": { "namespaces": [{ "name": "chat", "allow_subscribe_for_client": true }] } });
    access_holds_across_nodes(cfg, false).await;
}

/// `/health` follows the NATS connection: 503 naming the broker while the
/// server is stopped, 200 once the client has reconnected.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_follows_nats() {
    let Some(mut nats) = own_nats() else {
        return;
    };
    let url = format!("nats://127.0.0.1:{}", nats.port);
    let cfg = json!({ "broker": { "enabled": true, "type": "nats",
            "nats": { "url": url, "prefix": unique("h") } },
        "channel": { "namespaces": [{ "name": "chat", "allow_subscribe_for_client": true }] } });
    let node = node("a", &cfg);
    let (status, h) = node.get("/health").await;
    assert_eq!(status, 200, "{h}");
    assert_eq!(
        h["checks"]["broker"],
        json!({"status": "ok", "type": "nats"})
    );
    nats.stop();
    eventually("503 while NATS is down", || async {
        let (status, h) = node.get("/health").await;
        status == 503 && h["checks"]["broker"]["status"] == "unavailable"
    })
    .await;
    nats.restart();
    eventually("200 once NATS is back", || async {
        node.get("/health").await.0 == 200
    })
    .await;
}

/// A nats-server of the test's own on a free port (no JetStream), which the
/// test can stop and restart.
pub(crate) fn own_nats() -> Option<OwnServer> {
    OwnServer::start("nats-server", |port| {
        ["-a", "127.0.0.1", "-p", &port.to_string()]
            .map(String::from)
            .to_vec()
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nats_channels_are_counted_across_nodes() {
    let Some(nats) = env_url("HERALD_TEST_NATS_URL") else {
        return;
    };
    let cfg = json!({ "broker": { "enabled": true, "type": "nats",
            "nats": { "url": nats, "prefix": unique("t") } } });
    channels_counted_across_nodes(cfg).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nats_watchlists_see_every_node() {
    if let Some(cfg) = nats_with_shared_presence() {
        watchlists_across_nodes(cfg).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nats_leaves_reach_the_others_when_a_node_stops() {
    if let Some(cfg) = nats_with_shared_presence() {
        leaves_reach_the_others_when_a_node_stops(cfg).await;
    }
}

/// The NATS broker with presence in Redis (each a fresh prefix); `None`
/// when either service is not set up.
fn nats_with_shared_presence() -> Option<serde_json::Value> {
    let nats = env_url("HERALD_TEST_NATS_URL")?;
    let redis = env_url("HERALD_TEST_REDIS_URL")?;
    Some(json!({
        "broker": { "enabled": true, "type": "nats",
            "nats": { "url": nats, "prefix": unique("t") } },
        "presence_manager": { "enabled": true, "type": "redis",
            "redis": { "address": redis, "prefix": unique("t") } }
    }))
}
