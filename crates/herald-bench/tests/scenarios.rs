//! Each scenario, briefly and with few connections, against a real Herald
//! started in-process on 127.0.0.1:0. These check that the scenarios work
//! (everyone connects, nothing is lost), not how fast anything is.
//! `dur` keeps durable history (SQLite in the test's data directory),
//! `hist` memory history, `plain` none.

use std::time::Duration;

use herald_bench::bare::BareServer;
use herald_bench::report::Report;
use herald_bench::scenario::delivery::Load;
use herald_bench::scenario::{chat, connect_storm, durable_publish, fanout, idle, many_channels};
use herald_bench::target::{Auth, Target, Transport};
use herald_testkit::{env_url, unique, TestServer};
use serde_json::{json, Value};

const SECRET: &str = "bench-test-secret";
const API_KEY: &str = "bench-test-key";
/// Longest a whole scenario may take here (1 s of load plus set-up).
const SCENARIO_LIMIT: Duration = Duration::from_secs(30);

/// The load generator's target: the server's WebSocket endpoint.
fn target(server: &TestServer) -> Target {
    Target::parse(&server.ws_url()).expect("a ws:// URL")
}

fn namespaces() -> Value {
    json!([
        { "name": "hist", "history_size": 1000, "history_ttl": "60s",
          "allow_subscribe_for_client": true, "allow_publish_for_client": true },
        { "name": "dur", "history_storage": "durable",
          "allow_subscribe_for_client": true, "allow_publish_for_client": true },
        { "name": "plain", "allow_subscribe_for_client": true, "allow_publish_for_client": true },
        { "name": "room", "presence": true, "join_leave": true, "history_size": 20,
          "history_ttl": "60s", "allow_subscribe_for_client": true,
          "allow_publish_for_subscriber": true, "allow_history_for_subscriber": true,
          "allow_presence_for_subscriber": true }
    ])
}

async fn durable_publish(target: Target, auth: Auth, prefix: &str) {
    let options = durable_publish::Options {
        target,
        auth,
        channel_prefix: prefix.into(),
        channels: 2,
        publishers: 4,
        payload: 200,
        duration: Duration::from_secs(1),
        warmup: Duration::from_millis(200),
        progress: false,
    };
    let r = tokio::time::timeout(SCENARIO_LIMIT, durable_publish::run(&options))
        .await
        .expect("scenario ends in time")
        .expect("scenario runs");
    assert_eq!(r.connected, 4, "{r:?}");
    assert!(r.acked > 0, "{r:?}");
    assert_eq!(r.errors.total, 0, "{r:?}");
    assert_eq!(r.publishers_stopped, 0, "{r:?}");
    assert_eq!(r.payload_bytes, 200);
    assert!(
        r.latency.p50_us > 0 && r.latency.p50_us <= r.latency.max_us,
        "{r:?}"
    );
}

/// A short publishing load (1 s after 200 ms of warm-up).
fn load(api_key: Option<&str>) -> Load {
    Load {
        start_at: None,
        listen_only: false,
        api_key: api_key.map(str::to_owned),
        publish_url: None,
        rate: 10.0,
        publishers: 1,
        payload: 10,
        duration: Duration::from_secs(1),
        warmup: Duration::from_millis(200),
        progress: false,
        server_pids: Vec::new(),
        source_ips: None,
        connect_concurrency: 4,
    }
}

async fn fanout(target: Target, auth: Auth, api_key: Option<&str>, channel: &str) {
    fanout_over(target, Vec::new(), auth, api_key, channel).await;
}

async fn fanout_over(
    target: Target,
    other_nodes: Vec<Target>,
    auth: Auth,
    api_key: Option<&str>,
    channel: &str,
) {
    let nodes = 1 + other_nodes.len();
    let options = fanout::Options {
        target,
        other_nodes,
        auth,
        channel: channel.into(),
        subscribers: 5,
        load: Load {
            rate: 50.0,
            publishers: 2,
            payload: 100,
            // This very process serves, so its CPU is what gets charged.
            server_pids: vec![std::process::id()],
            source_ips: Some(2),
            ..load(api_key)
        },
    };
    let r = tokio::time::timeout(SCENARIO_LIMIT, fanout::run(&options))
        .await
        .expect("scenario ends in time")
        .expect("scenario runs");
    assert_eq!(r.connected, 5, "{r:?}");
    assert_eq!(r.nodes, nodes, "{r:?}");
    let run = &r.run;
    assert!(run.published > 0, "{r:?}");
    assert_eq!(run.publish_errors.total, 0, "{r:?}");
    assert_eq!(r.lost, 0, "{r:?}");
    assert_eq!(run.delivered, run.published * 5, "{r:?}");
    assert_eq!(r.out_of_order, 0, "{r:?}");
    assert_eq!(run.subscribers_dropped, 0, "{r:?}");
    assert_eq!(run.subscriber_errors.total, 0, "{r:?}");
    assert!(r.kept_up, "{r:?}");
    assert!(r.clean(), "{r:?}");
    assert!(run.latency.count > 0, "{r:?}");
    let (cpu, kernel) = (run.usage.server_cpu_s, run.usage.server_system_s);
    assert!(
        cpu.zip(kernel).is_some_and(|(c, k)| k <= c),
        "the kernel's share is part of the CPU: {r:?}"
    );
    assert!(run.usage.operations > 0, "{r:?}");
}

async fn idle(target: Target, auth: Auth) {
    idle_for(target, auth, Duration::from_millis(300)).await;
}

/// Idle connections held for `hold`; none may drop.
async fn idle_for(target: Target, auth: Auth, hold: Duration) {
    let options = idle::Options {
        target,
        auth,
        connections: 20,
        channel_prefix: "plain:idle".into(),
        channels: 0,
        settle: Duration::from_millis(200),
        hold,
        server_pids: vec![std::process::id()],
        source_ips: None,
        connect_concurrency: 8,
        progress: false,
    };
    let r = tokio::time::timeout(SCENARIO_LIMIT, idle::run(&options))
        .await
        .expect("scenario ends in time")
        .expect("scenario runs");
    assert_eq!(r.connected, 20, "{r:?}");
    assert_eq!(r.connect_errors.total, 0, "{r:?}");
    assert_eq!(r.dropped, 0, "{r:?}");
    assert!(
        r.rss_before.is_some() && r.rss_after_hold.is_some(),
        "{r:?}"
    );
    assert!(r.rss_per_connection.is_some(), "{r:?}");
    assert_eq!(r.connect_latency.count, 20, "{r:?}");
}

async fn many_channels(target: Target, auth: Auth, api_key: Option<&str>) {
    let options = many_channels::Options {
        target,
        auth,
        channel_prefix: "plain:".into(),
        connections: 12,
        group_size: 4,
        group_ratio: 0.5,
        load: Load {
            rate: 200.0,
            publishers: 3,
            payload: 80,
            ..load(api_key)
        },
    };
    let r = tokio::time::timeout(SCENARIO_LIMIT, many_channels::run(&options))
        .await
        .expect("scenario ends in time")
        .expect("scenario runs");
    assert_eq!(r.connected, 12, "{r:?}");
    let run = &r.run;
    assert!(run.published > 100, "{r:?}");
    assert_eq!(run.publish_errors.total, 0, "{r:?}");
    // Each publication reaches one personal subscriber or a group of 4.
    assert!(
        r.expected > run.published && r.expected < run.published * 4,
        "{r:?}"
    );
    assert_eq!(run.delivered, r.expected, "{r:?}");
    assert_eq!(r.lost, 0, "{r:?}");
    assert_eq!(run.subscribers_dropped, 0, "{r:?}");
    assert_eq!(run.subscriber_errors.total, 0, "{r:?}");
    assert!(r.clean(), "{r:?}");
}

fn chat_options(target: Target, auth: Auth) -> chat::Options {
    chat::Options {
        target,
        auth,
        channel_prefix: "room:".into(),
        connections: 30,
        room_min: 5,
        room_max: 10,
        rate: 200.0,
        rejoin_rate: 20.0,
        history_limit: 5,
        payload: 80,
        duration: Duration::from_secs(1),
        warmup: Duration::from_millis(200),
        progress: false,
        server_pids: vec![std::process::id()],
        source_ips: None,
        connect_concurrency: 8,
    }
}

async fn chat(target: Target, auth: Auth) {
    let options = chat_options(target, auth);
    let r = tokio::time::timeout(SCENARIO_LIMIT, chat::run(&options))
        .await
        .expect("scenario ends in time")
        .expect("scenario runs");
    assert_eq!(r.connected, 30, "{r:?}");
    assert!((3..=6).contains(&r.rooms), "{r:?}");
    // Every kind of command was answered, none refused (join and leave
    // pushes are no errors either).
    for c in &r.commands {
        assert!(c.ok > 0 && c.errors.total == 0, "{}: {r:?}", c.command);
    }
    let published = r.commands[0].ok;
    assert!(published > 100, "{r:?}");
    // Each message reaches its room: 5 to 10 members, fewer while one is
    // away.
    assert!(
        r.delivered <= published * 10 && r.delivered >= published * 5 / 2,
        "{r:?}"
    );
    assert!(
        r.latency.count > 0 && r.server_cpu_s_per_million.is_some(),
        "{r:?}"
    );
    assert!(r.clean(), "{r:?}");
}

async fn connect_storm(target: Target, auth: Auth) {
    let options = connect_storm::Options {
        target,
        auth,
        clients: 50,
        concurrency: 10,
        channel_prefix: "plain:storm".into(),
        server_pid: Some(std::process::id()),
        source_ips: None,
        progress: false,
    };
    let r = tokio::time::timeout(SCENARIO_LIMIT, connect_storm::run(&options))
        .await
        .expect("scenario ends in time")
        .expect("scenario runs");
    assert_eq!(r.connected, 50, "{r:?}");
    assert_eq!(r.failed, 0, "{r:?}");
    assert!(r.connects_per_s > 0.0, "{r:?}");
    assert_eq!(r.latency.count, 50, "{r:?}");
    assert!(r.server_cpu_ms_per_connect.is_some(), "{r:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scenarios_against_a_dev_server() {
    let config = json!({ "log": { "level": "warn" }, "channel": { "namespaces": namespaces() } });
    let server = TestServer::with_config(config, true).await;
    durable_publish(target(&server), Auth::None, "dur:bench").await;
    durable_publish(target(&server), Auth::None, "hist:bench").await;
    durable_publish(target(&server), Auth::None, "plain:bench").await;
    fanout(target(&server), Auth::None, None, "hist:fan").await;
    idle(target(&server), Auth::None).await;
    many_channels(target(&server), Auth::None, None).await;
    chat(target(&server), Auth::None).await;
    connect_storm(target(&server), Auth::None).await;
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scenarios_with_tokens_and_api_key() {
    let config = json!({
        "log": { "level": "warn" },
        "client": { "token": { "hmac_secret_key": SECRET } },
        "http_api": { "key": API_KEY },
        "channel": { "namespaces": namespaces() }
    });
    let server = TestServer::with_config(config, false).await;
    let auth = Auth::Hmac(SECRET.into());
    durable_publish(target(&server), auth.clone(), "hist:bench").await;
    fanout(target(&server), auth.clone(), Some(API_KEY), "plain:fan").await;
    many_channels(target(&server), auth.clone(), Some(API_KEY)).await;
    chat(target(&server), auth.clone()).await;
    connect_storm(target(&server), auth).await;
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fanout_and_idle_over_http_stream_and_sse() {
    let config = json!({
        "log": { "level": "warn" },
        "client": { "token": { "hmac_secret_key": SECRET } },
        "http_api": { "key": API_KEY },
        "http_stream": { "enabled": true },
        "sse": { "enabled": true },
        "channel": { "namespaces": namespaces() }
    });
    let mut fast_pings = config.clone();
    fast_pings["client"]["ping_interval"] = json!("1s");
    fast_pings["client"]["pong_timeout"] = json!("500ms");
    let server = TestServer::with_config(config, false).await;
    let auth = Auth::Hmac(SECRET.into());
    for transport in [Transport::HttpStream, Transport::Sse] {
        let over = || target(&server).with_transport(transport);
        // Commands (subscribe) go through the emulation endpoint.
        fanout(over(), auth.clone(), Some(API_KEY), "hist:streamed").await;
        idle(over(), auth.clone()).await;
    }
    server.stop().await;
    // Pings every second, answered through the emulation endpoint too: a
    // connection that missed one would be closed (3012) and counted.
    let server = TestServer::with_config(fast_pings, false).await;
    for transport in [Transport::HttpStream, Transport::Sse] {
        let over = target(&server).with_transport(transport);
        idle_for(over, auth.clone(), Duration::from_millis(2500)).await;
    }
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fanout_over_compressed_websockets() {
    let config = |compression: bool| {
        json!({
            "log": { "level": "warn" },
            "websocket": { "compression": compression },
            "channel": { "namespaces": namespaces() }
        })
    };
    let server = TestServer::with_config(config(true), true).await;
    fanout(
        target(&server).with_compression(true),
        Auth::None,
        None,
        "hist:deflated",
    )
    .await;
    server.stop().await;
    // A server that does not compress is refused by name, not measured
    // uncompressed.
    let server = TestServer::with_config(config(false), true).await;
    let over = target(&server).with_compression(true);
    let err = herald_bench::client::Client::connect(&over, "", None, Duration::from_secs(5))
        .await
        .err()
        .expect("refused");
    assert!(err.to_string().contains("permessage-deflate"), "{err}");
    server.stop().await;
}

/// Subscribers spread over two nodes of a Redis-brokered cluster, all
/// publications through the first (needs `HERALD_TEST_REDIS_URL`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fanout_over_a_redis_cluster() {
    let Some(url) = env_url("HERALD_TEST_REDIS_URL") else {
        return;
    };
    let prefix = unique("bench");
    let config = json!({
        "log": { "level": "warn" },
        "engine": { "type": "redis", "redis": { "address": url, "prefix": prefix } },
        "channel": { "namespaces": [namespaces()[0].clone()] }
    });
    let (a, b) = (
        TestServer::with_config(config.clone(), true).await,
        TestServer::with_config(config, true).await,
    );
    fanout_over(
        target(&a),
        vec![target(&b)],
        Auth::None,
        None,
        "hist:cluster",
    )
    .await;
    a.stop().await;
    b.stop().await;
}

/// Two runs given one start time: one publishes, the other only listens
/// (as processes holding a node's subscribers each would); the listener
/// gets every publication and measures its latency, a start time already
/// passed is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_listener_measures_what_another_run_publishes() {
    let config = json!({ "log": { "level": "warn" }, "channel": { "namespaces": namespaces() } });
    let server = TestServer::with_config(config, true).await;
    let start_at = std::time::SystemTime::now() + Duration::from_secs(3);
    let options = |listen_only| fanout::Options {
        target: target(&server),
        other_nodes: Vec::new(),
        auth: Auth::None,
        channel: "plain:both".into(),
        subscribers: 4,
        load: Load {
            rate: 50.0,
            start_at: Some(start_at),
            listen_only,
            ..load(None)
        },
    };
    let (publisher, listener) = (options(false), options(true));
    let (p, l) = tokio::join!(fanout::run(&publisher), fanout::run(&listener));
    let (p, l) = (p.expect("publisher runs"), l.expect("listener runs"));
    assert!(p.run.published > 30 && p.clean(), "{p:?}");
    assert_eq!(l.run.published, 0, "{l:?}");
    assert!(l.listen_only && l.clean(), "{l:?}");
    // Every publication reached the listener's 4 subscribers too, and the
    // ones of the window were measured, latency read across the two runs.
    assert_eq!(l.run.delivered, p.run.published * 4, "{p:?} {l:?}");
    assert_eq!(l.run.latency.count, p.run.latency.count, "{p:?} {l:?}");
    assert!(
        l.run.latency.p50_us > 0 && l.run.latency.p99_us < 5_000_000,
        "{l:?}"
    );

    let late = fanout::Options {
        load: Load {
            start_at: Some(std::time::SystemTime::now() - Duration::from_secs(1)),
            ..load(None)
        },
        ..options(true)
    };
    let err = fanout::run(&late).await.unwrap_err();
    assert!(err.to_string().contains("--start-at passed"), "{err}");
    server.stop().await;
}

/// Publishing flags out of range are refused before anything connects.
#[tokio::test]
async fn publishing_flags_are_checked_at_their_edges() {
    let options = |rate: f64, publishers: usize| many_channels::Options {
        target: Target::parse("ws://127.0.0.1:9/connection/websocket").unwrap(),
        auth: Auth::None,
        channel_prefix: "plain:".into(),
        connections: 1,
        group_size: 1,
        group_ratio: 0.0,
        load: Load {
            rate,
            publishers,
            duration: Duration::from_millis(10),
            warmup: Duration::ZERO,
            connect_concurrency: 1,
            ..load(None)
        },
    };
    for (rate, publishers, flag) in [
        (10.0, 65, "--publishers"),
        (10.0, 0, "--publishers"),
        (0.0, 1, "--rate"),
        (100_001.0, 1, "--rate"),
    ] {
        let err = many_channels::run(&options(rate, publishers))
            .await
            .unwrap_err();
        assert!(err.to_string().contains(flag), "{rate} {publishers}: {err}");
    }
    // At the edges themselves the run starts (and fails only to connect).
    let err = many_channels::run(&options(100_000.0, 64))
        .await
        .unwrap_err();
    assert!(!err.to_string().contains("must be"), "{err}");
}

/// Chat flags out of range, and the Pusher protocol (no replies to client
/// events, no history), are refused before anything connects.
#[tokio::test]
async fn chat_flags_are_checked_at_their_edges() {
    let target = Target::parse("ws://127.0.0.1:9/connection/websocket").unwrap();
    let refused = [
        chat::Options {
            room_min: 11,
            ..chat_options(target.clone(), Auth::None)
        },
        chat::Options {
            room_min: 0,
            ..chat_options(target.clone(), Auth::None)
        },
        chat::Options {
            rate: 0.0,
            ..chat_options(target.clone(), Auth::None)
        },
        chat::Options {
            rejoin_rate: -1.0,
            ..chat_options(target.clone(), Auth::None)
        },
        chat::Options {
            rejoin_rate: 100_001.0,
            ..chat_options(target.clone(), Auth::None)
        },
        chat_options(
            target
                .clone()
                .with_protocol(herald_bench::protocol::Protocol::Pusher),
            Auth::None,
        ),
    ];
    for options in refused {
        let err = chat::run(&options).await.unwrap_err();
        assert!(
            matches!(err, herald_bench::scenario::ScenarioError::Invalid(_)),
            "{options:?}: {err}"
        );
    }
    // At the edges themselves the run starts (and fails only to connect).
    let edge = chat::Options {
        room_min: 10,
        rejoin_rate: 0.0,
        rate: 100_000.0,
        server_pids: vec![],
        ..chat_options(target, Auth::None)
    };
    let err = chat::run(&edge).await.unwrap_err();
    assert!(
        matches!(err, herald_bench::scenario::ScenarioError::NoConnections(_)),
        "{err}"
    );
}

#[tokio::test]
async fn wrong_secret_is_reported_not_hidden() {
    let config = json!({
        "log": { "level": "error" },
        "client": { "token": { "hmac_secret_key": SECRET } },
        "channel": { "namespaces": namespaces() }
    });
    let server = TestServer::with_config(config, false).await;
    let options = durable_publish::Options {
        target: target(&server),
        auth: Auth::Hmac("not-the-secret".into()),
        channel_prefix: "plain:x".into(),
        channels: 1,
        publishers: 2,
        payload: 50,
        duration: Duration::from_millis(100),
        warmup: Duration::ZERO,
        progress: false,
    };
    let err = durable_publish::run(&options).await.unwrap_err();
    assert!(err.to_string().contains("no connection"), "{err}");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fanout_and_storm_against_the_bare_server() {
    let bare = BareServer::bind("127.0.0.1".parse().unwrap(), 0)
        .await
        .unwrap();
    let addr = bare.local_addr().unwrap();
    let stop = tokio_util::sync::CancellationToken::new();
    let stopped = stop.clone();
    let task = tokio::spawn(bare.run(async move { stopped.cancelled().await }));
    let target = Target::parse(&format!("ws://{addr}/connection/websocket")).unwrap();
    fanout(target.clone(), Auth::None, None, "any").await;
    connect_storm(target, Auth::None).await;
    stop.cancel();
    tokio::time::timeout(Duration::from_secs(10), task)
        .await
        .expect("bare server stops in time")
        .unwrap()
        .unwrap();
}
