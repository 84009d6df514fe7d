//! At least once across a crash: webhook events recorded while the
//! receiver is down survive a SIGKILL of the server and arrive, each once
//! per id, after a restart on the same storage.

use std::collections::HashSet;

use herald_testkit::{eventually, free_port, metric, Receiver};

use super::*;

const CLIENTS: usize = 20;

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
                "events": ["connect", "subscribe"], "secret": "s",
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
    served.signal("KILL");
    served.wait_exit();
    drop(clients);

    // The receiver comes up; so does the server, on the same storage.
    let receiver = Receiver::start_at(&format!("127.0.0.1:{port}")).await;
    let _again = serve_with_args(&config, &args);
    eventually("every event delivered", || async {
        receiver.of("connect").len() >= CLIENTS && receiver.of("subscribe").len() >= CLIENTS
    })
    .await;
    let got = receiver.all();
    let ids: HashSet<&str> = got.iter().filter_map(|r| r.body["id"].as_str()).collect();
    assert_eq!(ids.len(), 2 * CLIENTS, "each event once: {got:?}");
    let subscribed = receiver.of("subscribe");
    let channels: HashSet<&str> = subscribed
        .iter()
        .filter_map(|r| r.body["channel"].as_str())
        .collect();
    assert_eq!(channels.len(), CLIENTS, "one subscribe event per channel");
    for r in &got {
        assert_eq!(r.header("x-herald-delivery"), r.body["id"].as_str());
    }
}
