//! A node of a test cluster: a `herald serve` process with the base config,
//! a test's changes, its own name and data directory, and a fast
//! announcement interval so that nodes see each other quickly.

use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::{base_config, merge, Served, Ws, API_KEY, WAIT};

/// A running node, killed on drop.
pub struct ClusterNode {
    pub served: Served,
    _dir: tempfile::TempDir,
}

impl ClusterNode {
    /// Starts the `herald` binary at `bin` as node `name` with the base
    /// config and `patch` merged over it.
    pub fn start(bin: &str, name: &str, patch: &Value) -> ClusterNode {
        let mut cfg = base_config();
        merge(&mut cfg, patch.clone());
        merge(
            &mut cfg,
            json!({ "node": { "name": name, "info_publish_interval": "300ms" } }),
        );
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("config.json");
        std::fs::write(&path, cfg.to_string()).expect("config written");
        let mut cmd = Command::new(bin);
        cmd.args(["serve", "-c"])
            .arg(&path)
            .args(["--port", "0", "--address", "127.0.0.1", "--data-dir"])
            .arg(dir.path().join("data"))
            .env("RUST_LOG", "info");
        ClusterNode {
            served: Served::spawn(cmd, WAIT),
            _dir: dir,
        }
    }

    /// How many times the node has logged that its broker connection was
    /// restored, counting until `quiet` passes without another log line
    /// (or [`WAIT`] in all).
    pub fn restorations(&self, quiet: Duration) -> usize {
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

    /// Waits until the node logs a line containing `text`.
    pub fn logged(&self, text: &str) {
        self.served.logged(text);
    }

    /// The URL of `path` on the node's HTTP server.
    pub fn http(&self, path: &str) -> String {
        format!("http://{}{path}", self.served.addr)
    }

    pub fn ws_url(&self) -> String {
        format!("ws://{}/connection/websocket", self.served.addr)
    }

    /// Calls the server API; the HTTP status and the reply (JSON, or the
    /// body as a string).
    pub async fn api_raw(&self, method: &str, body: Value) -> (u16, Value) {
        let res = reqwest::Client::new()
            .post(format!("http://{}/api/{method}", self.served.addr))
            .header("X-API-Key", API_KEY)
            .body(body.to_string())
            .timeout(WAIT)
            .send()
            .await
            .expect("API reachable");
        let status = res.status().as_u16();
        let text = res.text().await.expect("API body");
        (status, serde_json::from_str(&text).unwrap_or(json!(text)))
    }

    /// Calls the server API and returns its `result` (must succeed).
    pub async fn api(&self, method: &str, body: Value) -> Value {
        let (status, reply) = self.api_raw(method, body).await;
        assert_eq!(status, 200, "{method}: {reply}");
        assert!(reply.get("error").is_none(), "{method}: {reply}");
        reply["result"].clone()
    }

    /// GETs `path` of the node's HTTP server: the status and the body
    /// (JSON, or the text as a string).
    pub async fn get(&self, path: &str) -> (u16, Value) {
        let res = reqwest::Client::new()
            .get(format!("http://{}{path}", self.served.addr))
            .timeout(WAIT)
            .send()
            .await
            .expect("node reachable");
        let status = res.status().as_u16();
        let text = res.text().await.expect("body");
        (status, serde_json::from_str(&text).unwrap_or(json!(text)))
    }

    /// A connected client of `user`.
    pub async fn client(&self, user: &str) -> Ws {
        Ws::connected(&self.ws_url(), user).await
    }

    /// A counter from the node's `/metrics`.
    pub async fn metric(&self, name: &str) -> u64 {
        crate::metric(&self.served.addr.to_string(), name).await
    }
}
