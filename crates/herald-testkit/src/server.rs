//! A Herald started in-process on 127.0.0.1:0 through the same build path
//! as `herald serve` (configuration loaded from a file, `Server::bind`),
//! with its own data directory.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;

use herald::config::{self, Overrides};
use herald::node::Node;
use herald::server::Server;
use serde_json::{json, Value};
use tokio_util::sync::CancellationToken;

use crate::{Ws, API_KEY, SECRET, WAIT};

pub struct TestServer {
    pub addr: SocketAddr,
    /// The gRPC API's address, when the config enables it.
    pub grpc: Option<SocketAddr>,
    /// The unidirectional gRPC transport's address, when enabled.
    pub uni_grpc: Option<SocketAddr>,
    /// The internal listener's address, when the config asks for one.
    pub internal: Option<SocketAddr>,
    pub node: Arc<Node>,
    stop: CancellationToken,
    task: tokio::task::JoinHandle<()>,
    /// The configuration file and the data directory.
    pub dir: tempfile::TempDir,
}

/// A config with a token secret, an API key and a few namespaces, which
/// [`TestServer::start`] merges a test's changes over.
pub fn base_config() -> Value {
    json!({
        "client": { "token": { "hmac_secret_key": SECRET }, "allowed_origins": ["http://allowed.example"] },
        "http_api": { "key": API_KEY },
        "prometheus": { "enabled": true },
        "log": { "level": "warn" },
        "channel": {
            "without_namespace": { "allow_subscribe_for_client": true },
            "namespaces": [
                { "name": "chat", "allow_subscribe_for_client": true, "allow_publish_for_subscriber": true },
                { "name": "open", "allow_subscribe_for_client": true, "allow_publish_for_client": true },
                { "name": "ro", "allow_subscribe_for_client": true },
                { "name": "secret" },
                { "name": "dm", "allow_user_limited_channels": true },
                { "name": "hist", "history_size": 100, "history_ttl": "300s", "force_recovery": true,
                  "allow_subscribe_for_client": true, "allow_history_for_subscriber": true,
                  "allow_publish_for_subscriber": true },
                { "name": "small", "history_size": 3, "history_ttl": "300s", "force_recovery": true,
                  "allow_subscribe_for_client": true, "allow_history_for_client": true },
                { "name": "cache", "history_size": 10, "history_ttl": "300s", "force_recovery": true,
                  "force_recovery_mode": "cache", "allow_subscribe_for_client": true },
                { "name": "pos", "history_size": 10, "history_ttl": "300s", "allow_positioning": true,
                  "allow_subscribe_for_client": true },
                { "name": "roomh", "presence": true, "join_leave": true, "force_push_join_leave": true,
                  "history_size": 10, "history_ttl": "300s", "force_recovery": true,
                  "allow_subscribe_for_client": true },
                { "name": "room", "presence": true, "join_leave": true, "force_push_join_leave": true,
                  "allow_subscribe_for_client": true, "allow_presence_for_subscriber": true }
            ]
        }
    })
}

/// Merges `patch` into `base`: objects key by key, anything else replaced.
pub fn merge(base: &mut Value, patch: Value) {
    match (base, patch) {
        (Value::Object(b), Value::Object(p)) => {
            for (k, v) in p {
                merge(b.entry(k).or_insert(Value::Null), v);
            }
        }
        (b, p) => *b = p,
    }
}

/// The error loading `config` (as a config file) gives; panics when it
/// loads.
pub fn config_refusal(config: &Value) -> String {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("config.json");
    std::fs::write(&path, config.to_string()).expect("config written");
    match herald::config::load(Some(&path), &Default::default(), &Default::default()) {
        Ok(_) => panic!("config loaded, expected a refusal: {config}"),
        Err(e) => e.to_string(),
    }
}

/// Publishes 8 KiB publications (`data(n, pad)`) to `channel` through the
/// node until a client is closed as too slow, a batch at a time; how many
/// it took. Fails past 64 MiB (kernel buffers hold a few MiB before a
/// write waits).
pub async fn overflow(s: &TestServer, channel: &str, data: impl Fn(usize, &str) -> Value) -> usize {
    use std::sync::atomic::Ordering;
    let pad = "x".repeat(8 * 1024);
    let max = 64 * 1024 * 1024 / pad.len();
    let mut published = 0;
    while s.node.counters.slow_disconnects.load(Ordering::SeqCst) == 0 {
        assert!(published < max, "no slow disconnect after {published}");
        for _ in 0..16 {
            let body = bytes::Bytes::from(data(published, &pad).to_string());
            s.node
                .publish(channel, body, Default::default())
                .await
                .expect("published");
            published += 1;
        }
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
    published
}

impl TestServer {
    /// The base config with `patch` merged over it.
    pub async fn start(patch: Value) -> Self {
        Self::start_with(patch, false).await
    }

    /// The base config in `--dev` mode.
    pub async fn start_dev() -> Self {
        Self::start_with(json!({}), true).await
    }

    pub async fn start_with(patch: Value, dev: bool) -> Self {
        let mut cfg = base_config();
        merge(&mut cfg, patch);
        Self::with_config(cfg, dev).await
    }

    /// Exactly `config`, nothing merged.
    pub async fn with_config(config: Value, dev: bool) -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("config.json");
        std::fs::write(&path, config.to_string()).expect("config written");
        let overrides = Overrides {
            port: Some(0),
            address: Some("127.0.0.1".into()),
            data_dir: Some(dir.path().join("data").display().to_string()),
            dev,
        };
        let loaded = config::load(Some(&path), &BTreeMap::new(), &overrides).expect("config loads");
        let server = Server::bind(loaded.config).await.expect("server binds");
        let addr = server.local_addr();
        let grpc = server.grpc_addr();
        let uni_grpc = server.uni_grpc_addr();
        let internal = server.internal_addr();
        let node = server.node().clone();
        let stop = server.shutdown_token();
        let task = tokio::spawn(async move { server.run().await.expect("server runs") });
        Self {
            addr,
            grpc,
            uni_grpc,
            internal,
            node,
            stop,
            task,
            dir,
        }
    }

    pub fn ws_url(&self) -> String {
        format!("ws://{}/connection/websocket", self.addr)
    }

    pub fn http(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// Calls the server API with `key`; returns the HTTP status and body.
    pub async fn api_raw(&self, method: &str, body: &str, key: Option<&str>) -> (u16, String) {
        let mut req = reqwest::Client::new()
            .post(self.http(&format!("/api/{method}")))
            .body(body.to_string());
        if let Some(k) = key {
            req = req.header("X-API-Key", k);
        }
        let resp = tokio::time::timeout(WAIT, req.send())
            .await
            .expect("API in time")
            .expect("API reachable");
        let status = resp.status().as_u16();
        (status, resp.text().await.expect("API body"))
    }

    /// Calls the server API and returns the parsed JSON reply (must be 200).
    pub async fn api(&self, method: &str, body: Value) -> Value {
        let (status, text) = self.api_raw(method, &body.to_string(), Some(API_KEY)).await;
        assert_eq!(status, 200, "{method}: {text}");
        serde_json::from_str(&text).expect("API reply is JSON")
    }

    /// Connects a client and completes the connect command with a token
    /// for `user`.
    pub async fn client(&self, user: &str) -> Ws {
        Ws::connected(&self.ws_url(), user).await
    }

    /// A counter or gauge from `/metrics`.
    pub async fn metric(&self, name: &str) -> u64 {
        crate::metric(&self.addr.to_string(), name).await
    }

    /// Shuts the server down gracefully and waits for it.
    pub async fn stop(self) {
        self.stop.cancel();
        tokio::time::timeout(WAIT, self.task)
            .await
            .expect("server stops in time")
            .expect("server task ends");
    }
}
