//! When a connection writes: frames that come faster than a write each is
//! worth share writes (`client.adaptive_write_delay`, on by default, and
//! Centrifugo's fixed `client.write_delay`), a quiet connection writes at
//! once, and a reply to the client is never held.

use std::time::{Duration, Instant};

use serde_json::json;

use herald_testkit::*;

/// A subscriber of `chat:w` on a server with `client` settings.
async fn subscriber(client: serde_json::Value) -> (TestServer, Ws) {
    let server = TestServer::start(json!({ "client": client })).await;
    let mut ws = server.client("u1").await;
    let reply = ws.cmd(json!({"subscribe": {"channel": "chat:w"}})).await;
    assert!(reply.get("subscribe").is_some(), "{reply}");
    (server, ws)
}

async fn publish(server: &TestServer, n: usize) {
    let r = server
        .api("publish", json!({"channel": "chat:w", "data": {"n": n}}))
        .await;
    assert!(r.get("error").is_none(), "{r}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn write_delay_collects_messages_into_one_write() {
    let (server, mut ws) = subscriber(json!({ "write_delay": "300ms" })).await;
    let before = ws.frames;
    for n in 0..3 {
        publish(&server, n).await;
    }
    for n in 0..3 {
        assert_eq!(ws.push().await["pub"]["data"]["n"], n);
    }
    // Published well within the delay: all three came in one message.
    assert_eq!(ws.frames - before, 1);
    server.stop().await;
}

/// Publishes `count` publications 40 ms apart (a steady stream), checks
/// that every one arrives in order, and returns how many WebSocket
/// messages they came in.
async fn steady_stream(server: &TestServer, ws: &mut Ws, count: usize) -> usize {
    let before = ws.frames;
    for n in 0..count {
        publish(server, n).await;
        tokio::time::sleep(Duration::from_millis(40)).await;
    }
    for n in 0..count {
        assert_eq!(
            ws.push().await["pub"]["data"]["n"],
            n,
            "every frame, in order"
        );
    }
    ws.frames - before
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_busy_connection_gets_its_frames_in_fewer_writes() {
    let (server, mut ws) = subscriber(json!({ "adaptive_write_delay": "1s" })).await;
    // Each frame after the first waits for the next; the two share a write.
    let count = 12;
    let writes = steady_stream(&server, &mut ws, count).await;
    assert!(
        writes <= count - 3,
        "{writes} writes for {count} frames: frames should share writes"
    );
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_the_adaptive_delay_every_frame_is_a_write() {
    let (server, mut ws) = subscriber(json!({ "adaptive_write_delay": "0s" })).await;
    assert_eq!(steady_stream(&server, &mut ws, 6).await, 6);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_quiet_connection_writes_a_frame_at_once() {
    let (server, mut ws) = subscriber(json!({ "adaptive_write_delay": "1s" })).await;
    // Quiet for longer than the cap since the subscribe reply.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let sent = Instant::now();
    publish(&server, 1).await;
    assert_eq!(ws.push().await["pub"]["data"]["n"], 1);
    // Held, it would wait for the next frame (none comes) up to the cap.
    assert!(
        sent.elapsed() < Duration::from_millis(600),
        "a quiet connection's frame took {:?}",
        sent.elapsed()
    );
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_frames_that_happen_to_meet_are_not_held() {
    let (server, mut ws) = subscriber(json!({ "adaptive_write_delay": "1s" })).await;
    tokio::time::sleep(Duration::from_millis(1100)).await;
    publish(&server, 1).await;
    assert_eq!(ws.push().await["pub"]["data"]["n"], 1);
    // The second frame comes well within the cap of the first one's write,
    // but after a quiet spell: no steady rate, so it is not held for a
    // third (held, it would wait half a second for one that never comes).
    tokio::time::sleep(Duration::from_millis(400)).await;
    let sent = Instant::now();
    publish(&server, 2).await;
    assert_eq!(ws.push().await["pub"]["data"]["n"], 2);
    assert!(
        sent.elapsed() < Duration::from_millis(300),
        "the second frame took {:?}",
        sent.elapsed()
    );
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reply_is_not_held_with_the_frames_before_it() {
    let (server, mut ws) = subscriber(json!({ "write_delay": "1s" })).await;
    publish(&server, 1).await;
    // The publication waits out the delay; the ping's reply does not, and
    // takes the publication with it, in order.
    let sent = Instant::now();
    let id = ws.send(json!({"ping": {}})).await;
    assert_eq!(ws.push().await["pub"]["data"]["n"], 1);
    let reply = ws.reply(id).await;
    assert!(reply.get("ping").is_some(), "{reply}");
    assert!(
        sent.elapsed() < Duration::from_millis(600),
        "the reply took {:?}",
        sent.elapsed()
    );
    server.stop().await;
}
