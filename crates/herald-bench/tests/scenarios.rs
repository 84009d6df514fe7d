//! Each scenario, briefly and with few connections, against a real Herald
//! started in-process on 127.0.0.1:0. These check that the scenarios work
//! (everyone connects, nothing is lost), not how fast anything is.
//! `dur` keeps durable history (SQLite in the test's data directory),
//! `hist` memory history, `plain` none.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

use herald::config::{self, Overrides};
use herald::server::Server;
use herald_bench::scenario::{durable_publish, fanout};
use herald_bench::target::{Auth, Target};
use serde_json::{json, Value};
use tokio_util::sync::CancellationToken;

const SECRET: &str = "bench-test-secret";
const API_KEY: &str = "bench-test-key";
/// Longest a whole scenario may take here (1 s of load plus set-up).
const SCENARIO_LIMIT: Duration = Duration::from_secs(30);

struct Running {
    addr: SocketAddr,
    stop: CancellationToken,
    task: tokio::task::JoinHandle<()>,
    _dir: tempfile::TempDir,
}

impl Running {
    async fn start(config: Value, dev: bool) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("config.json");
        std::fs::write(&path, config.to_string()).unwrap();
        let overrides = Overrides {
            port: Some(0),
            address: Some("127.0.0.1".into()),
            data_dir: Some(dir.path().join("data").display().to_string()),
            dev,
        };
        let loaded = config::load(Some(&path), &BTreeMap::new(), &overrides).expect("config loads");
        let server = Server::bind(loaded.config).await.expect("server binds");
        let addr = server.local_addr();
        let stop = server.shutdown_token();
        let task = tokio::spawn(async move { server.run().await.expect("server runs") });
        Self {
            addr,
            stop,
            task,
            _dir: dir,
        }
    }

    fn target(&self) -> Target {
        Target::parse(&format!("ws://{}/connection/websocket", self.addr)).unwrap()
    }

    async fn stop(self) {
        self.stop.cancel();
        tokio::time::timeout(Duration::from_secs(10), self.task)
            .await
            .expect("server stops in time")
            .unwrap();
    }
}

fn namespaces() -> Value {
    json!([
        { "name": "hist", "history_size": 1000, "history_ttl": "60s",
          "allow_subscribe_for_client": true, "allow_publish_for_client": true },
        { "name": "dur", "history_storage": "durable",
          "allow_subscribe_for_client": true, "allow_publish_for_client": true },
        { "name": "plain", "allow_subscribe_for_client": true, "allow_publish_for_client": true }
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

async fn fanout(target: Target, auth: Auth, api_key: Option<&str>, channel: &str) {
    let options = fanout::Options {
        target,
        auth,
        api_key: api_key.map(str::to_owned),
        channel: channel.into(),
        subscribers: 5,
        rate: 50.0,
        payload: 100,
        duration: Duration::from_secs(1),
        warmup: Duration::from_millis(200),
        progress: false,
    };
    let r = tokio::time::timeout(SCENARIO_LIMIT, fanout::run(&options))
        .await
        .expect("scenario ends in time")
        .expect("scenario runs");
    assert_eq!(r.connected, 5, "{r:?}");
    assert!(r.published > 0, "{r:?}");
    assert_eq!(r.publish_errors.total, 0, "{r:?}");
    assert_eq!(r.lost, 0, "{r:?}");
    assert_eq!(r.delivered, r.published * 5, "{r:?}");
    assert_eq!(r.out_of_order, 0, "{r:?}");
    assert_eq!(r.subscribers_dropped, 0, "{r:?}");
    assert!(r.latency.count > 0, "{r:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scenarios_against_a_dev_server() {
    let config = json!({ "log": { "level": "warn" }, "channel": { "namespaces": namespaces() } });
    let server = Running::start(config, true).await;
    durable_publish(server.target(), Auth::None, "dur:bench").await;
    durable_publish(server.target(), Auth::None, "hist:bench").await;
    durable_publish(server.target(), Auth::None, "plain:bench").await;
    fanout(server.target(), Auth::None, None, "hist:fan").await;
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
    let server = Running::start(config, false).await;
    let auth = Auth::Hmac(SECRET.into());
    durable_publish(server.target(), auth.clone(), "hist:bench").await;
    fanout(server.target(), auth, Some(API_KEY), "plain:fan").await;
    server.stop().await;
}

#[tokio::test]
async fn wrong_secret_is_reported_not_hidden() {
    let config = json!({
        "log": { "level": "error" },
        "client": { "token": { "hmac_secret_key": SECRET } },
        "channel": { "namespaces": namespaces() }
    });
    let server = Running::start(config, false).await;
    let options = durable_publish::Options {
        target: server.target(),
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
