//! Nothing acknowledged is lost: publishers run against a durable namespace,
//! the server is killed with SIGKILL, restarted on the same storage, and
//! every acknowledged publication must be in history — contiguous offsets,
//! same epoch — and a subscriber recovers everything it missed.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

use herald_testkit::{wait_until, TestDatabase};
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

async fn api(addr: &str, method: &str, body: Value) -> Result<Value, String> {
    let resp = reqwest::Client::new()
        .post(format!("http://{addr}/api/{method}"))
        .body(body.to_string())
        .send()
        .await
        .map_err(|e| e.to_string())?;
    resp.json::<Value>().await.map_err(|e| e.to_string())
}

/// The next message of `ws` that is not a ping; the connection must stay up.
async fn next(ws: &mut Ws) -> Value {
    match ws.next().await {
        Event::Msg(m) => m,
        Event::Closed(c) => panic!("connection ended: {c:?}"),
    }
}

async fn crash_and_recover(storage: Value) {
    let dir = tempfile::tempdir().unwrap();
    let config = durable_config(dir.path(), storage);
    let data_dir = dir.path().join("data");
    let served = serve_with_args(&config, &["--data-dir", data_dir.to_str().unwrap()]);
    let addr = served.addr.clone();

    // A subscriber that sees the start of the stream, then is cut off.
    let mut ws = Ws::connect(&addr).await;
    ws.cmd(json!({"connect": {}})).await;
    let r = ws.cmd(json!({"subscribe": {"channel": CHANNEL}})).await;
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
        let m = next(&mut ws).await;
        if let Some(offset) = m["push"]["pub"]["offset"].as_u64() {
            assert_eq!(offset, seen + 1, "in order, no gaps");
            seen = offset;
        }
    }
    wait_until("300 publications acknowledged", || {
        acked.lock().len() >= 300
    })
    .await;
    served.signal("KILL");
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
    let mut ws = Ws::connect(&addr).await;
    ws.cmd(json!({"connect": {}})).await;
    let req =
        json!({"subscribe": {"channel": CHANNEL, "recover": true, "offset": seen, "epoch": epoch}});
    let r = ws.cmd(req).await;
    assert_eq!(r["subscribe"]["recovered"], true, "{r}");
    let recovered: Vec<u64> = r["subscribe"]["publications"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["offset"].as_u64().unwrap())
        .collect();
    assert_eq!(recovered, (seen + 1..=top + 1).collect::<Vec<_>>());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_loses_nothing_acknowledged_on_sqlite() {
    crash_and_recover(json!({"type": "sqlite"})).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_loses_nothing_acknowledged_on_postgres() {
    let Some(db) = TestDatabase::create() else {
        return;
    };
    crash_and_recover(json!({"type": "postgres", "postgres": {"url": db.url}})).await;
}
