//! Nothing acknowledged is lost: publishers run against a durable namespace,
//! the server is killed with SIGKILL, restarted on the same storage, and
//! every acknowledged publication must be in history — contiguous offsets,
//! same epoch — and a subscriber recovers everything it missed.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

use parking_lot::Mutex;

use super::*;

/// Publishers running concurrently against the server until it dies.
const PUBLISHERS: usize = 8;
const CHANNEL: &str = "dur:crash";

fn durable_config(dir: &Path, storage: Value) -> std::path::PathBuf {
    let path = dir.join("config.json");
    let config = json!({
        "http_api": {"insecure": true},
        "client": {"insecure": true},
        "storage": storage,
        "channel": {"namespaces": [{"name": "dur", "history_storage": "durable", "force_recovery": true}]}
    });
    write(&path, &config);
    path
}

fn sigkill(child: &Child) {
    let status = Command::new("kill")
        .args(["-KILL", &child.id().to_string()])
        .status()
        .expect("kill runs");
    assert!(status.success());
}

async fn api(addr: &str, method: &str, body: Value) -> Result<Value, String> {
    let resp = reqwest::Client::new()
        .post(format!("http://{addr}/api/{method}"))
        .body(body.to_string())
        .send()
        .await
        .map_err(|e| e.to_string())?;
    resp.json::<Value>().await.map_err(|e| e.to_string())
}

/// A protocol client that splits batched frames into messages.
struct Client {
    ws: Socket,
    queue: std::collections::VecDeque<Value>,
}

impl Client {
    async fn open(addr: &str) -> Self {
        Self {
            ws: ws_connect(addr).await.unwrap(),
            queue: Default::default(),
        }
    }

    async fn next(&mut self) -> Value {
        loop {
            if let Some(m) = self.queue.pop_front() {
                return m;
            }
            let msg = tokio::time::timeout(WAIT, self.ws.next())
                .await
                .expect("message in time");
            if let Some(Ok(Message::Text(t))) = msg {
                for line in t.as_str().split('\n').filter(|l| !l.trim().is_empty()) {
                    self.queue.push_back(serde_json::from_str(line).unwrap());
                }
            } else if !matches!(msg, Some(Ok(_))) {
                panic!("connection ended: {msg:?}");
            }
        }
    }

    /// Sends a command and waits for its reply, dropping other messages.
    async fn command(&mut self, id: u32, mut cmd: Value) -> Value {
        cmd["id"] = json!(id);
        self.ws.send(Message::text(cmd.to_string())).await.unwrap();
        loop {
            let m = self.next().await;
            if m["id"] == json!(id) {
                return m;
            }
        }
    }
}

async fn crash_and_recover(storage: Value) {
    let dir = tempfile::tempdir().unwrap();
    let config = durable_config(dir.path(), storage);
    let data_dir = dir.path().join("data");
    let served = serve_with_args(&config, &["--data-dir", data_dir.to_str().unwrap()]);
    let addr = served.addr.clone();

    // A subscriber that sees the start of the stream, then is cut off.
    let mut ws = Client::open(&addr).await;
    ws.command(1, json!({"connect": {}})).await;
    let r = ws
        .command(2, json!({"subscribe": {"channel": CHANNEL}}))
        .await;
    let epoch = r["subscribe"]["epoch"]
        .as_str()
        .expect("durable streams are positioned")
        .to_string();

    let acked: Arc<Mutex<BTreeMap<u64, String>>> = Arc::default();
    let mut publishers = Vec::new();
    for p in 0..PUBLISHERS {
        let (addr, acked) = (addr.clone(), acked.clone());
        publishers.push(tokio::spawn(async move {
            for n in 0..100_000u32 {
                let tag = format!("{p}-{n}");
                let Ok(r) = api(
                    &addr,
                    "publish",
                    json!({"channel": CHANNEL, "data": {"tag": tag}}),
                )
                .await
                else {
                    return;
                };
                let Some(offset) = r["result"]["offset"].as_u64() else {
                    return;
                };
                acked.lock().insert(offset, tag);
            }
        }));
    }
    // Let some publications through to the subscriber, then kill mid-stream.
    let mut seen = 0u64;
    while seen < 50 {
        let m = ws.next().await;
        if let Some(offset) = m["push"]["pub"]["offset"].as_u64() {
            assert_eq!(offset, seen + 1, "in order, no gaps");
            seen = offset;
        }
    }
    wait_for(|| acked.lock().len() >= 300);
    sigkill(&served.child);
    for p in publishers {
        p.await.unwrap();
    }
    drop(served);
    let acked = std::mem::take(&mut *acked.lock());
    assert!(
        acked.len() >= 300,
        "publishers were running when the server died"
    );

    let served = serve_with_args(&config, &["--data-dir", data_dir.to_str().unwrap()]);
    let addr = served.addr.clone();
    let history = api(&addr, "history", json!({"channel": CHANNEL, "limit": -1}))
        .await
        .unwrap();
    let h = &history["result"];
    assert_eq!(h["epoch"], epoch, "the epoch survives the crash");
    let pubs = h["publications"].as_array().unwrap();
    let offsets: Vec<u64> = pubs.iter().map(|p| p["offset"].as_u64().unwrap()).collect();
    let top = h["offset"].as_u64().unwrap();
    assert_eq!(
        offsets,
        (1..=top).collect::<Vec<_>>(),
        "contiguous offsets from 1"
    );
    for (offset, tag) in &acked {
        assert_eq!(
            pubs[(*offset - 1) as usize]["data"]["tag"],
            json!(tag),
            "acknowledged offset {offset}"
        );
    }
    let after: u64 = api(
        &addr,
        "publish",
        json!({"channel": CHANNEL, "data": {"tag": "after"}}),
    )
    .await
    .unwrap()["result"]["offset"]
        .as_u64()
        .unwrap();
    assert_eq!(after, top + 1, "offsets continue, never reused");

    // The subscriber comes back and recovers all it missed.
    let mut ws = Client::open(&addr).await;
    ws.command(1, json!({"connect": {}})).await;
    let req =
        json!({"subscribe": {"channel": CHANNEL, "recover": true, "offset": seen, "epoch": epoch}});
    let r = ws.command(2, req).await;
    assert_eq!(r["subscribe"]["recovered"], true, "{r}");
    let recovered: Vec<u64> = r["subscribe"]["publications"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["offset"].as_u64().unwrap())
        .collect();
    assert_eq!(recovered, (seen + 1..=top + 1).collect::<Vec<_>>());
}

fn wait_for(cond: impl Fn() -> bool) {
    let deadline = Instant::now() + WAIT;
    while !cond() {
        assert!(Instant::now() < deadline, "timed out");
        std::thread::sleep(Duration::from_millis(5));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_loses_nothing_acknowledged_on_sqlite() {
    crash_and_recover(json!({"type": "sqlite"})).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_loses_nothing_acknowledged_on_postgres() {
    let Ok(url) = std::env::var("HERALD_TEST_POSTGRES_URL") else {
        eprintln!("skipped: HERALD_TEST_POSTGRES_URL not set");
        return;
    };
    let db = format!("herald_crash_{}", uuid::Uuid::new_v4().simple());
    let admin = Command::new("psql")
        .args([url.as_str(), "-qc", &format!("CREATE DATABASE {db}")])
        .status();
    assert!(
        admin.is_ok_and(|s| s.success()),
        "psql could create a database at {url}"
    );
    let base = url.rsplit_once('/').map(|(b, _)| b).unwrap_or(&url);
    crash_and_recover(json!({"type": "postgres", "postgres": {"url": format!("{base}/{db}")}}))
        .await;
    let _ = Command::new("psql")
        .args([
            url.as_str(),
            "-qc",
            &format!("DROP DATABASE {db} WITH (FORCE)"),
        ])
        .status();
}
