//! Test kit: start a server with a given config, connect protocol clients,
//! call the server API, sign tokens. Every wait is bounded.

#![allow(dead_code)]

use std::collections::{BTreeMap, VecDeque};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use herald::config::{self, Overrides};
use herald::node::Node;
use herald::server::Server;
use serde_json::{json, Value};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};
use tokio_util::sync::CancellationToken;

pub const SECRET: &str = "integration-secret";
pub const API_KEY: &str = "integration-api-key";
/// Longest any single wait may take before the test fails.
pub const WAIT: Duration = Duration::from_secs(10);

pub struct TestServer {
    pub addr: SocketAddr,
    pub node: Arc<Node>,
    stop: CancellationToken,
    task: tokio::task::JoinHandle<()>,
    _dir: tempfile::TempDir,
}

/// A config with a token secret, an API key and a few namespaces; `patch`
/// is merged over it.
pub fn base_config() -> Value {
    json!({
        "client": { "token": { "hmac_secret_key": SECRET }, "allowed_origins": ["http://allowed.example"] },
        "http_api": { "key": API_KEY },
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

impl TestServer {
    pub async fn start(patch: Value) -> Self {
        Self::start_with(patch, false).await
    }

    pub async fn start_dev() -> Self {
        Self::start_with(json!({}), true).await
    }

    pub async fn start_with(patch: Value, dev: bool) -> Self {
        let mut cfg = base_config();
        merge(&mut cfg, patch);
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("config.json");
        std::fs::write(&path, cfg.to_string()).unwrap();
        let overrides = Overrides {
            port: Some(0),
            address: Some("127.0.0.1".into()),
            data_dir: Some(dir.path().join("data").display().to_string()),
            dev,
        };
        let loaded = config::load(Some(&path), &BTreeMap::new(), &overrides).expect("config loads");
        let server = Server::bind(loaded.config).await.expect("server binds");
        let addr = server.local_addr();
        let node = server.node().clone();
        let stop = server.shutdown_token();
        let task = tokio::spawn(async move { server.run().await.expect("server runs") });
        Self {
            addr,
            node,
            stop,
            task,
            _dir: dir,
        }
    }

    pub fn ws_url(&self) -> String {
        format!("ws://{}/connection/websocket", self.addr)
    }

    pub fn http(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// Calls the server API with the test key; returns the HTTP status and body.
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
        (status, resp.text().await.unwrap())
    }

    /// Calls the server API and returns the parsed JSON reply (must be 200).
    pub async fn api(&self, method: &str, body: Value) -> Value {
        let (status, text) = self.api_raw(method, &body.to_string(), Some(API_KEY)).await;
        assert_eq!(status, 200, "{method}: {text}");
        serde_json::from_str(&text).unwrap()
    }

    /// Connects a client and completes the connect command with a token for `user`.
    pub async fn client(&self, user: &str) -> Ws {
        let mut ws = Ws::open(&self.ws_url()).await;
        let reply = ws
            .cmd(json!({"connect": {"token": token(json!({"sub": user}))}}))
            .await;
        assert!(reply.get("connect").is_some(), "connect failed: {reply}");
        ws
    }

    pub async fn stop(self) {
        self.stop.cancel();
        tokio::time::timeout(WAIT, self.task)
            .await
            .expect("server stops in time")
            .unwrap();
    }
}

/// Signs an HS256 token with the test secret.
pub fn token(claims: Value) -> String {
    herald::auth::sign_hs256(&claims, SECRET).unwrap()
}

pub fn now() -> i64 {
    herald::auth::now_unix()
}

/// Waits for `cond` to become true, polling; fails after [`WAIT`].
pub async fn wait_until(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + WAIT;
    while !cond() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// What the server sent, one protocol message at a time.
#[derive(Debug)]
pub enum Event {
    Msg(Value),
    Closed(Option<(u16, String)>),
}

/// A raw protocol client over a real WebSocket.
pub struct Ws {
    stream: WebSocketStream<MaybeTlsStream<TcpStream>>,
    /// Messages read and set aside while waiting for a reply.
    pending: VecDeque<Value>,
    /// Messages of a received frame not yet read.
    inbox: VecDeque<Value>,
    next_id: u32,
    pub frames: usize,
}

impl Ws {
    pub async fn open(url: &str) -> Self {
        let (stream, _) = tokio::time::timeout(WAIT, tokio_tungstenite::connect_async(url))
            .await
            .expect("connect in time")
            .expect("WebSocket upgrade");
        Self {
            stream,
            pending: VecDeque::new(),
            inbox: VecDeque::new(),
            next_id: 0,
            frames: 0,
        }
    }

    pub async fn send_text(&mut self, text: &str) {
        self.stream.send(Message::text(text)).await.expect("send");
    }

    /// Sends a command with the next id and returns that id.
    pub async fn send(&mut self, mut command: Value) -> u32 {
        self.next_id += 1;
        command["id"] = json!(self.next_id);
        self.send_text(&command.to_string()).await;
        self.next_id
    }

    /// Sends a command and waits for its reply, keeping pushes for later.
    pub async fn cmd(&mut self, command: Value) -> Value {
        let id = self.send(command).await;
        self.reply(id).await
    }

    /// Waits for the reply with `id`, keeping other messages.
    pub async fn reply(&mut self, id: u32) -> Value {
        if let Some(i) = self.pending.iter().position(|m| m["id"] == json!(id)) {
            return self.pending.remove(i).unwrap();
        }
        loop {
            match self.read().await {
                Event::Msg(m) if m["id"] == json!(id) => return m,
                Event::Msg(m) => self.pending.push_back(m),
                Event::Closed(c) => panic!("closed while waiting for reply {id}: {c:?}"),
            }
        }
    }

    /// The next message that is not a ping.
    pub async fn next(&mut self) -> Event {
        if let Some(m) = self.pending.pop_front() {
            return Event::Msg(m);
        }
        loop {
            match self.read().await {
                Event::Msg(m) if m == json!({}) => {}
                e => return e,
            }
        }
    }

    /// The next push (skipping pings), failing on close.
    pub async fn push(&mut self) -> Value {
        match self.next().await {
            Event::Msg(m) => {
                assert!(m.get("push").is_some(), "expected a push, got {m}");
                m["push"].clone()
            }
            Event::Closed(c) => panic!("closed while waiting for a push: {c:?}"),
        }
    }

    /// Reads the next protocol message (pings included), answering nothing.
    pub async fn read(&mut self) -> Event {
        if let Some(m) = self.inbox.pop_front() {
            return Event::Msg(m);
        }
        loop {
            let msg = tokio::time::timeout(WAIT, self.stream.next())
                .await
                .expect("message in time");
            match msg {
                Some(Ok(Message::Text(t))) => {
                    self.frames += 1;
                    let mut lines =
                        t.as_str()
                            .split('\n')
                            .filter(|l| !l.trim().is_empty())
                            .map(|l| {
                                serde_json::from_str::<Value>(l)
                                    .unwrap_or_else(|e| panic!("bad JSON from server {l:?}: {e}"))
                            });
                    let first = lines.next().expect("non-empty frame");
                    self.inbox.extend(lines);
                    return Event::Msg(first);
                }
                Some(Ok(Message::Close(frame))) => {
                    return Event::Closed(frame.map(|f| (u16::from(f.code), f.reason.to_string())))
                }
                Some(Ok(_)) => {}
                Some(Err(_)) | None => return Event::Closed(None),
            }
        }
    }

    /// Reads until the server closes; returns the close code and reason.
    pub async fn closed(&mut self) -> (u16, String) {
        loop {
            if let Event::Closed(c) = self.read().await {
                return c.expect("close frame with a code");
            }
        }
    }

    pub async fn close(mut self) {
        let _ = self.stream.close(None).await;
    }

    /// Answers a server ping.
    pub async fn pong(&mut self) {
        self.send_text("{}").await;
    }
}

pub fn code(c: CloseCode) -> u16 {
    u16::from(c)
}
