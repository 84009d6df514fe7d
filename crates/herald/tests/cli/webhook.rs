//! At least once across a crash: webhook events recorded while the
//! receiver is down, then failing, survive a SIGKILL of the server and
//! arrive after a restart on the same storage: each id delivered, every
//! attempt signed, an event tried before the kill delivered under the id it
//! was tried with.

use std::collections::HashSet;
use std::time::Instant;

use herald_testkit::{eventually, free_port, metric, Received, Receiver};

use super::*;

const CLIENTS: usize = 20;
const SECRET: &str = "crash-secret";

/// `sha256=` and the hex HMAC-SHA256 of the raw body with [`SECRET`].
fn signature(raw: &str) -> String {
    let hex = herald::signing::hmac_sha256_hex(SECRET.as_bytes(), raw.as_bytes());
    format!("sha256={hex}")
}

fn ids<'a>(got: impl Iterator<Item = &'a Received>) -> HashSet<&'a str> {
    got.filter_map(|r| r.body["id"].as_str()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_queued_for_a_down_receiver_survive_sigkill_and_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let config = dir.path().join("config.json");
    write(
        &config,
        &json!({
            "client": {"insecure": true},
            "prometheus": {"enabled": true},
            "webhooks": [{"name": "app", "url": format!("http://127.0.0.1:{port}/hook"),
                "events": ["connect", "subscribe"], "secret": SECRET,
                "retry_initial_delay": "100ms", "max_attempts": 30}],
        }),
    );
    let data_dir = dir.path().join("data");
    let args = ["--data-dir", data_dir.to_str().unwrap()];
    let mut served = serve_with_args(&config, &args);
    let mut clients = Vec::new();
    for n in 0..CLIENTS {
        let mut ws = Ws::connect(&served.addr).await;
        ws.cmd(json!({"connect": {}})).await;
        let r = ws
            .cmd(json!({"subscribe": {"channel": format!("room{n}")}}))
            .await;
        assert!(r.get("subscribe").is_some(), "{r}");
        clients.push(ws);
    }
    let addr = served.addr.clone();
    eventually("every event recorded", || async {
        metric(&addr, "herald_webhook_events_total").await >= 2 * CLIENTS as u64
    })
    .await;
    eventually("attempts failing while the receiver is down", || async {
        metric(&addr, "herald_webhook_failed_attempts_total").await > 0
    })
    .await;
    // The receiver comes up failing: every event is tried and gets 500.
    let receiver = Receiver::start_answering(&format!("127.0.0.1:{port}"), 500).await;
    eventually("every event answered 500", || async {
        let got = receiver.all();
        ids(got.iter().filter(|r| r.status == 500)).len() == 2 * CLIENTS
    })
    .await;
    served.signal("KILL");
    served.wait_exit();
    drop(clients);
    let killed = Instant::now();
    let before = receiver.all();
    let refused = ids(before.iter().filter(|r| r.status == 500));

    // The receiver takes them now; the server restarts on the same storage.
    receiver.answer(200);
    let _again = serve_with_args(&config, &args);
    let delivered = || {
        let got = receiver.all();
        let ok = got.iter().filter(|r| r.status == 200);
        ids(ok).len()
    };
    eventually("every event delivered", || async {
        delivered() == 2 * CLIENTS
    })
    .await;
    let got = receiver.all();
    let after: Vec<&Received> = got.iter().filter(|r| r.at > killed).collect();
    assert!(after.iter().all(|r| r.status == 200));
    let redelivered = ids(after.iter().copied());
    assert_eq!(
        redelivered, refused,
        "each event answered 500 before the kill is delivered after it, with its id"
    );
    let subscribed = receiver.of("subscribe");
    let channels: HashSet<&str> = subscribed
        .iter()
        .filter(|r| r.status == 200)
        .filter_map(|r| r.body["channel"].as_str())
        .collect();
    assert_eq!(channels.len(), CLIENTS, "one subscribe event per channel");
    for r in &got {
        assert_eq!(r.header("x-herald-delivery"), r.body["id"].as_str());
        assert_eq!(r.header("x-herald-event"), r.body["event"].as_str());
        assert_eq!(
            r.header("x-herald-signature"),
            Some(signature(&r.raw).as_str()),
            "every attempt signed: {}",
            r.raw
        );
    }
}
