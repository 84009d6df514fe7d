//! Three `herald` processes on different ports forming one cluster over the
//! real Redis, NATS and PostgreSQL servers named by `HERALD_TEST_REDIS_URL`,
//! `HERALD_TEST_NATS_URL` and `HERALD_TEST_POSTGRES_URL` (a test whose
//! service is not configured says so and passes). Every test uses its own
//! key prefix, subject prefix and database. The broker-restart tests start
//! their own `redis-server` / `nats-server` on a free port, so that they can
//! stop and restart it.

#[path = "common/served.rs"]
mod served;
#[path = "it/support.rs"]
mod support;

use std::net::TcpListener;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use served::Served;
use support::{base_config, merge, token, Event, Ws, API_KEY, WAIT};

/// A node of the test cluster: a running `herald serve`, killed on drop.
struct Node {
    served: Served,
    _dir: tempfile::TempDir,
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

impl Node {
    /// Starts a node with the test config merged with `patch`.
    fn start(name: &str, patch: &Value) -> Node {
        let mut cfg = base_config();
        merge(&mut cfg, patch.clone());
        merge(
            &mut cfg,
            json!({ "node": { "name": name, "info_publish_interval": "300ms" } }),
        );
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("config.json");
        std::fs::write(&path, cfg.to_string()).unwrap();
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_herald"));
        cmd.args(["serve", "-c"])
            .arg(&path)
            .args(["--port", "0", "--address", "127.0.0.1", "--data-dir"])
            .arg(dir.path().join("data"))
            .env("RUST_LOG", "info");
        Node {
            served: Served::spawn(cmd, WAIT),
            _dir: dir,
        }
    }

    /// How many times the node has logged that its broker connection was
    /// restored, counting until `quiet` passes without another log line
    /// (or `WAIT` in all).
    fn restorations(&self, quiet: Duration) -> usize {
        let deadline = Instant::now() + WAIT;
        let mut n = 0;
        while let Ok(line) = self.served.lines.recv_timeout(quiet) {
            n += usize::from(line.contains("broker connection restored"));
            if Instant::now() > deadline {
                break;
            }
        }
        n
    }

    fn ws_url(&self) -> String {
        format!("ws://{}/connection/websocket", self.served.addr)
    }

    async fn api_raw(&self, method: &str, body: Value) -> (u16, Value) {
        let res = reqwest::Client::new()
            .post(format!("http://{}/api/{method}", self.served.addr))
            .header("X-API-Key", API_KEY)
            .body(body.to_string())
            .timeout(WAIT)
            .send()
            .await
            .expect("API reachable");
        let status = res.status().as_u16();
        let text = res.text().await.unwrap();
        (status, serde_json::from_str(&text).unwrap_or(json!(text)))
    }

    async fn api(&self, method: &str, body: Value) -> Value {
        let (status, reply) = self.api_raw(method, body).await;
        assert_eq!(status, 200, "{method}: {reply}");
        assert!(reply.get("error").is_none(), "{method}: {reply}");
        reply["result"].clone()
    }

    async fn client(&self, user: &str) -> Ws {
        let mut ws = Ws::open(&self.ws_url()).await;
        let reply = ws
            .cmd(json!({"connect": {"token": token(json!({"sub": user}))}}))
            .await;
        assert!(reply.get("connect").is_some(), "connect failed: {reply}");
        ws
    }
}

/// With `HERALD_TEST_REQUIRE_SERVICES` set (as CI does), a missing service
/// fails the test instead of skipping it.
fn required() -> bool {
    std::env::var_os("HERALD_TEST_REQUIRE_SERVICES").is_some()
}

fn env_url(var: &str) -> Option<String> {
    let url = std::env::var(var).ok();
    if url.is_none() {
        assert!(!required(), "{var} is not set");
        eprintln!("skipped: {var} not set");
    }
    url
}

fn unique(prefix: &str) -> String {
    format!(
        "{prefix}{}",
        &uuid::Uuid::new_v4().simple().to_string()[..12]
    )
}

/// Waits until `check` passes, polling; fails after `WAIT`.
async fn eventually<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + WAIT;
    while !check().await {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
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

/// Publishes `{"node": i, "n": n}` for n in 0..each through every node's
/// API at once, node i publishing sequentially; every one acknowledged.
async fn publish_from_every_node(nodes: &[Node], channel: &str, each: usize) {
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

fn redis_engine(url: &str, prefix: &str) -> Value {
    json!({ "engine": { "type": "redis", "redis": { "address": url, "prefix": prefix } } })
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_subscribe_on_redis_only_while_they_have_subscribers() {
    let Some(url) = env_url("HERALD_TEST_REDIS_URL") else {
        return;
    };
    let prefix = unique("t");
    let cfg = redis_engine(&url, &prefix);
    let nodes: Vec<Node> = ["a", "b"].iter().map(|n| Node::start(n, &cfg)).collect();
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

/// A counter from a node's `/metrics`.
async fn metric(node: &Node, name: &str) -> u64 {
    let text = reqwest::get(format!("http://{}/metrics", node.served.addr))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.trim().parse().ok())
        .unwrap_or_else(|| panic!("no {name} in {text}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broker_connections_stay_up_across_health_checks() {
    // Pub/sub connections are checked every io_timeout; healthy ones must
    // never be dropped (each drop loses publications in flight).
    let nats = env_url("HERALD_TEST_NATS_URL");
    let Some(url) = env_url("HERALD_TEST_REDIS_URL") else {
        return;
    };
    let mut redis = redis_engine(&url, &unique("t"));
    merge(
        &mut redis,
        json!({ "engine": { "redis": { "io_timeout": "200ms" } } }),
    );
    let mut configs = vec![redis];
    if let Some(nats) = nats {
        configs.push(json!({
            "broker": { "enabled": true, "type": "nats",
                "nats": { "url": nats, "prefix": unique("t"), "io_timeout": "200ms" } },
            "presence_manager": { "enabled": true, "type": "redis",
                "redis": { "address": url, "prefix": unique("t"), "io_timeout": "200ms" } },
            "channel": { "namespaces": [
                { "name": "chat", "allow_subscribe_for_client": true }
            ] }
        }));
    }
    for cfg in configs {
        let node = Node::start("a", &cfg);
        let mut ws = node.client("u").await;
        subscribe(&mut ws, "chat:quiet").await;
        tokio::time::sleep(Duration::from_millis(1500)).await;
        node.api("publish", json!({"channel": "chat:quiet", "data": 1}))
            .await;
        assert_eq!(next_pub(&mut ws, "chat:quiet").await["data"], 1);
        assert_eq!(
            metric(&node, "herald_broker_reconnects_total").await,
            0,
            "{cfg}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_cluster_acts_as_one_server() {
    let Some(url) = env_url("HERALD_TEST_REDIS_URL") else {
        return;
    };
    let cfg = redis_engine(&url, &unique("t"));
    let nodes: Vec<Node> = ["a", "b", "c"]
        .iter()
        .map(|n| Node::start(n, &cfg))
        .collect();
    let (a, b, c) = (&nodes[0], &nodes[1], &nodes[2]);

    // info lists every node, with its figures, wherever it is asked.
    eventually("three nodes in info", || async {
        b.api("info", json!({})).await["nodes"]
            .as_array()
            .unwrap()
            .len()
            == 3
    })
    .await;

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
    eventually("node c gone from info", || async {
        nodes[0].api("info", json!({})).await["nodes"]
            .as_array()
            .unwrap()
            .len()
            == 2
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_streams_keep_one_order_under_publishers_on_every_node() {
    // The `hist` namespace keeps 100 publications: 3 × 30 fit.
    let Some(url) = env_url("HERALD_TEST_REDIS_URL") else {
        return;
    };
    let cfg = redis_engine(&url, &unique("t"));
    let nodes: Vec<Node> = ["a", "b", "c"]
        .iter()
        .map(|n| Node::start(n, &cfg))
        .collect();
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
        let h = node
            .api("history", json!({"channel": "hist:race", "limit": -1}))
            .await;
        let offsets: Vec<u64> = h["publications"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p["offset"].as_u64().unwrap())
            .collect();
        assert_eq!(offsets, (1..=(3 * EACH) as u64).collect::<Vec<_>>());
        assert_eq!(h["epoch"], sub["epoch"]);
    }
}

/// A PostgreSQL database of the test's own, dropped at the end.
struct Database {
    admin: String,
    name: String,
    url: String,
}

impl Database {
    fn create(admin: &str) -> Database {
        let name = unique("herald_cluster_");
        let ok = Command::new("psql")
            .args([admin, "-qc", &format!("CREATE DATABASE {name}")])
            .status()
            .is_ok_and(|s| s.success());
        assert!(ok, "cannot create a database through {admin}");
        let base = admin.rsplit_once('/').map_or(admin, |(b, _)| b);
        Database {
            admin: admin.to_string(),
            url: format!("{base}/{name}"),
            name,
        }
    }
}

impl Drop for Database {
    fn drop(&mut self) {
        let _ = Command::new("psql")
            .args([
                &self.admin,
                "-qc",
                &format!("DROP DATABASE {} WITH (FORCE)", self.name),
            ])
            .status();
    }
}

fn durable_namespace(db: &Database) -> Value {
    json!({
        "storage": { "type": "postgres", "postgres": { "url": db.url } },
        "channel": { "namespaces": [
            { "name": "chat", "allow_subscribe_for_client": true, "allow_publish_for_subscriber": true },
            { "name": "log", "history_storage": "durable", "history_size": 0, "history_ttl": "0s",
              "force_recovery": true, "allow_subscribe_for_client": true }
        ] }
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nats_cluster_with_postgres_streams() {
    let (Some(nats), Some(pg)) = (
        env_url("HERALD_TEST_NATS_URL"),
        env_url("HERALD_TEST_POSTGRES_URL"),
    ) else {
        return;
    };
    let db = Database::create(&pg);
    let mut cfg = json!({ "broker": { "enabled": true, "type": "nats",
        "nats": { "url": nats, "prefix": unique("t") } } });
    merge(&mut cfg, durable_namespace(&db));
    let nodes: Vec<Node> = ["a", "b", "c"]
        .iter()
        .map(|n| Node::start(n, &cfg))
        .collect();

    // Channel names with NATS wildcard characters neither break nor widen
    // subscriptions.
    let mut exact = nodes[0].client("u1").await;
    let mut star = nodes[2].client("u2").await;
    subscribe(&mut exact, "chat:a.b c").await;
    subscribe(&mut star, "chat:a.*").await;
    subscribe(&mut star, "chat:>").await;
    eventually("three nodes in info", || async {
        nodes[1].api("info", json!({})).await["nodes"]
            .as_array()
            .unwrap()
            .len()
            == 3
    })
    .await;
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
    let filled = metric(&nodes[1], "herald_stream_gaps_filled_total").await;
    eprintln!("gaps filled on the subscriber's node: {filled}");
    let h = nodes[2]
        .api("history", json!({"channel": "log:orders", "limit": -1}))
        .await;
    let offsets: Vec<u64> = h["publications"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["offset"].as_u64().unwrap())
        .collect();
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

/// A broker server of the test's own, on a free port.
struct OwnServer {
    child: Option<Child>,
    port: u16,
    program: &'static str,
    args: Vec<String>,
}

impl OwnServer {
    fn start(program: &'static str, args: Vec<String>, port: u16) -> Option<OwnServer> {
        let mut s = OwnServer {
            child: None,
            port,
            program,
            args,
        };
        s.restart().then_some(s)
    }

    /// Starts the server (again) and waits until its port answers.
    fn restart(&mut self) -> bool {
        let Ok(child) = Command::new(self.program)
            .args(&self.args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
        else {
            assert!(!required(), "{} cannot be started", self.program);
            eprintln!("skipped: {} cannot be started", self.program);
            return false;
        };
        self.child = Some(child);
        let deadline = Instant::now() + WAIT;
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(Instant::now() < deadline, "{} did not start", self.program);
            std::thread::sleep(Duration::from_millis(20));
        }
        true
    }

    fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for OwnServer {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Publishes `data` through `node` until it is acknowledged, counting the
/// failures (which must come quickly, not hang).
async fn publish_acknowledged(node: &Node, channel: &str, data: Value) -> usize {
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
    let nodes: Vec<Node> = ["a", "b"].iter().map(|n| Node::start(n, &cfg)).collect();
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
            tokio::time::sleep(Duration::from_millis(300)).await;
            assert!(broker.restart());
        }
        if n == 30 {
            // A second subscriber joins the same node mid-stream.
            let mut ws = nodes[1].client("late").await;
            let s = subscribe(&mut ws, channel).await;
            late = Some((ws, s));
        }
        if n == 40 && durable {
            assert!(broker.restart());
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_restart_mid_stream_recovers_durable_streams() {
    let Some(pg) = env_url("HERALD_TEST_POSTGRES_URL") else {
        return;
    };
    let port = free_port();
    let args = vec![
        "--port".into(),
        port.to_string(),
        "--bind".into(),
        "127.0.0.1".into(),
        "--save".into(),
        "".into(),
        "--appendonly".into(),
        "no".into(),
    ];
    let Some(redis) = OwnServer::start("redis-server", args, port) else {
        return;
    };
    let db = Database::create(&pg);
    let mut cfg = redis_engine(&format!("redis://127.0.0.1:{port}"), "restart");
    merge(&mut cfg, durable_namespace(&db));
    broker_restart(redis, cfg, true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_restart_mid_stream_recovers_persisted_redis_streams() {
    let port = free_port();
    let dir = tempfile::tempdir().unwrap();
    let args = vec![
        "--port".into(),
        port.to_string(),
        "--bind".into(),
        "127.0.0.1".into(),
        "--dir".into(),
        dir.path().display().to_string(),
        "--save".into(),
        "".into(),
        "--appendonly".into(),
        "yes".into(),
        "--appendfsync".into(),
        "always".into(),
    ];
    let Some(redis) = OwnServer::start("redis-server", args, port) else {
        return;
    };
    let cfg = redis_engine(&format!("redis://127.0.0.1:{port}"), "restart");
    broker_restart(redis, cfg, false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nats_restart_mid_stream_recovers_durable_streams() {
    let Some(pg) = env_url("HERALD_TEST_POSTGRES_URL") else {
        return;
    };
    let port = free_port();
    let args = vec![
        "-a".into(),
        "127.0.0.1".into(),
        "-p".into(),
        port.to_string(),
    ];
    let Some(nats) = OwnServer::start("nats-server", args, port) else {
        return;
    };
    let db = Database::create(&pg);
    let mut cfg = json!({ "broker": { "enabled": true, "type": "nats",
        "nats": { "url": format!("nats://127.0.0.1:{port}"), "prefix": "restart" } } });
    merge(&mut cfg, durable_namespace(&db));
    broker_restart(nats, cfg, true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn channels_shard_across_several_redis_servers() {
    let dirs: Vec<tempfile::TempDir> = (0..2).map(|_| tempfile::tempdir().unwrap()).collect();
    let mut servers = Vec::new();
    for dir in &dirs {
        let port = free_port();
        let args = vec![
            "--port".into(),
            port.to_string(),
            "--bind".into(),
            "127.0.0.1".into(),
            "--save".into(),
            "".into(),
            "--dir".into(),
            dir.path().display().to_string(),
        ];
        let Some(s) = OwnServer::start("redis-server", args, port) else {
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
    let nodes: Vec<Node> = ["a", "b"].iter().map(|n| Node::start(n, &cfg)).collect();
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
    eventually("both nodes in info", || async {
        nodes[1].api("info", json!({})).await["nodes"]
            .as_array()
            .unwrap()
            .len()
            == 2
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shared_presence_drops_thousands_of_expired_entries() {
    use herald::broker::RedisShards;
    use herald::config::{Dur, RedisConfig};
    use herald::presence::RedisPresence;

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
