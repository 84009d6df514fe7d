//! Faults a cluster meets besides a broker restart: the Redis server
//! dropping only the nodes' pub/sub connections while their command
//! connections stay up, a node paused (`SIGSTOP`) while the rest of the
//! cluster goes on, and a Redis or NATS server that stops answering without
//! closing anything. In each, no call hangs and no subscriber misses a
//! publication silently.

use std::time::Duration;

use herald_testkit::{answers_within, env_url, eventually, merge, unique, ClusterNode, Ws};
use serde_json::{json, Value};

use super::nats::own_nats_with_postgres;
use super::redis::own_redis;
use super::*;

/// Drops the pub/sub connections of a Redis server and, in the same
/// transaction, lets no new connection in (`maxclients` 1), so that the
/// nodes cannot subscribe again until [`admit`]: publications in between
/// are certain to miss them. How many connections were dropped.
async fn drop_pubsub(admin: &mut ::redis::aio::MultiplexedConnection) -> u64 {
    let (dropped,): (u64,) = ::redis::pipe()
        .atomic()
        .cmd("CLIENT")
        .arg(&["KILL", "TYPE", "pubsub"][..])
        .cmd("CONFIG")
        .arg(&["SET", "maxclients", "1"][..])
        .ignore()
        .query_async(admin)
        .await
        .expect("pub/sub connections dropped");
    dropped
}

/// Lets connections in again after [`drop_pubsub`].
async fn admit(admin: &mut ::redis::aio::MultiplexedConnection) {
    let () = ::redis::cmd("CONFIG")
        .arg(&["SET", "maxclients", "10000"][..])
        .query_async(admin)
        .await
        .expect("maxclients restored");
}

/// The Redis server drops the nodes' pub/sub connections (`CLIENT KILL
/// TYPE pubsub`), three times, while their command connections stay up and
/// publications go on through them: what a node missed until it subscribed
/// again, its subscribers recover (each is told to resubscribe once the
/// node is back), so every subscriber on either node ends with the whole
/// stream in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_pubsub_drops_leave_no_silent_gaps() {
    let Some((_redis, url)) = own_redis() else {
        return;
    };
    let mut admin = ::redis::Client::open(url.as_str())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .expect("admin connection");
    let cfg = redis_engine(&url, "drops");
    let nodes: Vec<ClusterNode> = ["a", "b"].iter().map(|n| node(n, &cfg)).collect();
    let channel = "hist:drops";
    const DROPS: usize = 3;
    const EACH: usize = 20;
    const TOTAL: usize = DROPS * EACH;
    // Each subscriber collects (and recovers) while the stream runs, so
    // that it is subscribed again before the next drop.
    let mut collectors = Vec::new();
    for n in &nodes {
        let mut ws = n.client("watcher").await;
        let sub = subscribe(&mut ws, channel).await;
        let epoch = sub["epoch"].as_str().unwrap().to_string();
        collectors.push(tokio::spawn(async move {
            collect_recovering(&mut ws, channel, TOTAL, 0, epoch).await
        }));
    }
    let mut n = 0;
    for _ in 0..DROPS {
        for _ in 0..EACH / 2 {
            publish_acknowledged(&nodes[n % 2], channel, json!({"n": n})).await;
            n += 1;
        }
        let dropped = drop_pubsub(&mut admin).await;
        assert!(dropped >= 2, "dropped {dropped} pub/sub connections");
        tokio::task::block_in_place(|| {
            for node in &nodes {
                node.logged("redis pub/sub reconnect failed");
            }
        });
        // Published while neither node is subscribed.
        for _ in 0..EACH / 2 {
            publish_acknowledged(&nodes[n % 2], channel, json!({"n": n})).await;
            n += 1;
        }
        admit(&mut admin).await;
        tokio::task::block_in_place(|| {
            for node in &nodes {
                node.logged("broker connection restored");
            }
        });
    }
    for collector in collectors {
        let (got, resubscribes) = collector.await.expect("collector ran");
        assert_eq!(resubscribes, DROPS, "told to recover once per drop");
        let seq: Vec<u64> = got.iter().map(|d| d["n"].as_u64().unwrap()).collect();
        assert_eq!(seq, (0..TOTAL as u64).collect::<Vec<_>>());
    }
    // One restoration per drop and node, seen above, and no more.
    for node in &nodes {
        assert_eq!(node.restorations(Duration::from_secs(1)), 0);
        assert_eq!(
            node.metric("herald_broker_reconnects_total").await,
            DROPS as u64
        );
    }
}

/// The client ids present in `channel`, as `node` reads them.
async fn present(node: &ClusterNode, channel: &str) -> Vec<String> {
    let reply = node.api("presence", json!({"channel": channel})).await;
    let clients = reply["presence"].as_object().cloned().unwrap_or_default();
    clients
        .values()
        .map(|c: &Value| c["user"].as_str().unwrap_or_default().to_string())
        .collect()
}

/// A node stopped with `SIGSTOP`: the others stop counting its clients as
/// present once `presence_ttl` passes, publications go on; when it
/// continues, its subscriber gets every publication of the pause in order
/// and is present again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paused_node_drops_out_of_presence_and_catches_up() {
    let Some(url) = env_url("HERALD_TEST_REDIS_URL") else {
        return;
    };
    let mut cfg = redis_engine(&url, &unique("t"));
    merge(
        &mut cfg,
        json!({"engine": {"redis": {"presence_ttl": "2s"}}}),
    );
    let nodes: Vec<ClusterNode> = ["a", "b"].iter().map(|n| node(n, &cfg)).collect();
    let channel = "roomh:pause";
    let mut ws = nodes[0].client("paused").await;
    let sub = subscribe(&mut ws, channel).await;
    let epoch = sub["epoch"].as_str().unwrap().to_string();
    eventually("the subscriber present on the other node", || async {
        present(&nodes[1], channel).await == ["paused"]
    })
    .await;

    nodes[0].served.signal("STOP");
    const DURING: usize = 10;
    for n in 0..DURING {
        publish_acknowledged(&nodes[1], channel, json!({"n": n})).await;
    }
    // Its entry expires while it cannot refresh it (the process is killed
    // on drop, stopped or not).
    eventually("the paused node's client gone from presence", || async {
        present(&nodes[1], channel).await.is_empty()
    })
    .await;
    nodes[0].served.signal("CONT");

    const AFTER: usize = 5;
    for n in DURING..DURING + AFTER {
        publish_acknowledged(&nodes[1], channel, json!({"n": n})).await;
    }
    let (got, _) = collect_recovering(&mut ws, channel, DURING + AFTER, 0, epoch).await;
    let seq: Vec<u64> = got.iter().map(|d| d["n"].as_u64().unwrap()).collect();
    assert_eq!(seq, (0..(DURING + AFTER) as u64).collect::<Vec<_>>());
    eventually("the subscriber present again", || async {
        present(&nodes[1], channel).await == ["paused"]
    })
    .await;
}

/// A Redis server that stops answering without closing anything
/// (`SIGSTOP`): publishes and history reads through either node fail
/// within `engine.redis.io_timeout` rather than hang, the nodes find their
/// pub/sub connections unresponsive; once Redis answers again publishing
/// resumes, and a subscriber ends with the whole stream as stored — every
/// acknowledged publication, and the one that failed only if Redis did
/// store it once it woke (n ≥ 100 here).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_redis_fails_calls_in_time_and_streams_resume() {
    let Some((redis, url)) = own_redis() else {
        return;
    };
    let mut cfg = redis_engine(&url, "silent");
    merge(
        &mut cfg,
        json!({"engine": {"redis": {"io_timeout": "500ms"}}}),
    );
    let channel = "hist:silent";
    let (nodes, mut watcher, epoch, mut acked) = streaming(&cfg, channel).await;

    redis.signal("STOP");
    for (node, method, body) in [
        (
            &nodes[0],
            "publish",
            json!({"channel": channel, "data": {"n": 100}}),
        ),
        (&nodes[1], "history", json!({"channel": channel})),
    ] {
        let (status, reply) =
            answers_within(Duration::from_secs(3), method, node.api_raw(method, body)).await;
        assert!(
            status != 200 || reply.get("error").is_some(),
            "{method}: {reply}"
        );
    }
    tokio::task::block_in_place(|| {
        for node in &nodes {
            node.logged("redis pub/sub connection unresponsive");
        }
    });
    redis.signal("CONT");
    tokio::task::block_in_place(|| {
        for node in &nodes {
            node.logged("broker connection restored");
        }
    });

    for n in 10..20u64 {
        publish_acknowledged(&nodes[n as usize % 2], channel, json!({"n": n})).await;
        acked.push(n);
    }
    ends_with_the_stream_as_stored(&nodes[0], &mut watcher, channel, epoch, &acked).await;
}

/// Two nodes with `cfg`, a watcher on the second subscribed to `channel`
/// (and the epoch it was told), and publications `{"n": 0…9}` through
/// both, acknowledged.
async fn streaming(cfg: &Value, channel: &str) -> (Vec<ClusterNode>, Ws, String, Vec<u64>) {
    let nodes: Vec<ClusterNode> = ["a", "b"].iter().map(|n| node(n, cfg)).collect();
    let mut watcher = nodes[1].client("watcher").await;
    let sub = subscribe(&mut watcher, channel).await;
    let epoch = sub["epoch"].as_str().unwrap().to_string();
    let mut acked = Vec::new();
    for n in 0..10u64 {
        publish_acknowledged(&nodes[n as usize % 2], channel, json!({"n": n})).await;
        acked.push(n);
    }
    (nodes, watcher, epoch, acked)
}

/// The stream of `channel` as `node` reads it holds every publication of
/// `acked` (`{"n": n}`) in order, and otherwise only unacknowledged ones
/// (n ≥ 100); `ws`, subscribed since offset 0 in `epoch`, gets exactly
/// that stream (recovering where it must).
async fn ends_with_the_stream_as_stored(
    node: &ClusterNode,
    ws: &mut Ws,
    channel: &str,
    epoch: String,
    acked: &[u64],
) {
    let history = node
        .api("history", json!({"channel": channel, "limit": -1}))
        .await;
    let stored: Vec<u64> = history["publications"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["data"]["n"].as_u64().unwrap())
        .collect();
    let expected: Vec<u64> = stored.iter().copied().filter(|n| *n < 100).collect();
    assert_eq!(expected, acked, "stored: {stored:?}");
    let (got, _) = collect_recovering(ws, channel, stored.len(), 0, epoch).await;
    let seen: Vec<u64> = got.iter().map(|d| d["n"].as_u64().unwrap()).collect();
    assert_eq!(seen, stored);
}

/// A NATS server that stops answering (`SIGSTOP`) under durable streams in
/// PostgreSQL: publishes are committed and answered in time (live delivery
/// waits for no broker), and once NATS answers again a subscriber on the
/// other node ends with the whole stream — what NATS did not carry, it
/// recovers from the stream.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_nats_delays_no_publish_and_streams_resume() {
    let Some((nats, cfg, _db)) = own_nats_with_postgres("silent") else {
        return;
    };
    let channel = "log:silent";
    let (nodes, mut watcher, epoch, mut acked) = streaming(&cfg, channel).await;

    // Stopped for about two seconds, publishing all along.
    nats.signal("STOP");
    for n in 10..30u64 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let publish = nodes[0].api_raw("publish", json!({"channel": channel, "data": {"n": n}}));
        let (status, reply) = answers_within(Duration::from_secs(3), "publish", publish).await;
        assert_eq!(status, 200, "{reply}");
        assert!(reply.get("error").is_none(), "{reply}");
        acked.push(n);
    }
    nats.signal("CONT");

    for n in 30..40u64 {
        publish_acknowledged(&nodes[n as usize % 2], channel, json!({"n": n})).await;
        acked.push(n);
    }
    ends_with_the_stream_as_stored(&nodes[0], &mut watcher, channel, epoch, &acked).await;
}
