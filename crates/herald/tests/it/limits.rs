//! Size and queue limits: the largest client frame, the per-connection
//! outbound queue (slow consumers are cut off with 3008 while fast ones on
//! the same channel carry on), the subscription count and the API body size.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use serde_json::{json, Value};

use herald_testkit::*;

/// A publish command whose JSON text is exactly `len` bytes long.
fn publish_of_len(id: u32, channel: &str, len: usize) -> String {
    let frame = |pad: usize| {
        json!({"id": id, "publish": {"channel": channel, "data": {"p": "x".repeat(pad)}}})
            .to_string()
    };
    let overhead = frame(0).len();
    assert!(overhead <= len, "{len} is too short for a publish");
    let text = frame(len - overhead);
    assert_eq!(text.len(), len);
    text
}

/// A subscriber of `open:big` and a writer that has published exactly `len`
/// bytes of command there: the reply and the delivery checked. Returns the
/// reader, the writer and the writer's next command id.
async fn publish_exactly(s: &TestServer, len: usize) -> (Ws, Ws, u32) {
    let mut reader = s.client("reader").await;
    let r = reader
        .cmd(json!({"subscribe": {"channel": "open:big"}}))
        .await;
    assert_eq!(r["subscribe"], json!({}), "{r}");
    let mut ws = s.client("writer").await;
    let id = ws.send(json!({"ping": {}})).await + 1;
    let text = publish_of_len(id, "open:big", len);
    let sent: Value = serde_json::from_str(&text).unwrap();
    ws.send_text(&text).await;
    let r = ws.reply(id).await;
    assert_eq!(r["publish"], json!({}), "{r}");
    let p = reader.push().await;
    assert_eq!(p["channel"], "open:big");
    assert_eq!(p["pub"]["data"], sent["publish"]["data"]);
    (reader, ws, id + 1)
}

#[tokio::test]
async fn message_size_limit_is_inclusive_and_larger_frames_close_with_1009() {
    const LIMIT: usize = 1024;
    let s = TestServer::start(json!({"websocket": {"message_size_limit": LIMIT}})).await;
    // Exactly the limit: accepted, answered and delivered.
    let (mut reader, mut ws, id) = publish_exactly(&s, LIMIT).await;

    // One byte more: the connection is closed with 1009.
    ws.send_text(&publish_of_len(id, "open:big", LIMIT + 1))
        .await;
    assert_eq!(ws.closed().await, (1009, "message too big".into()));

    // Nothing of the oversized publish reached the subscriber, which is
    // still connected.
    s.api("publish", json!({"channel": "open:big", "data": {"n": 2}}))
        .await;
    assert_eq!(reader.push().await["pub"]["data"], json!({"n": 2}));
    s.stop().await;
}

/// The default read buffer is small (an idle connection keeps it); a
/// message of the default 64 KiB limit, many buffers long, still arrives
/// whole, and the next command on the same connection is read normally.
#[tokio::test]
async fn messages_far_larger_than_the_read_buffer_arrive_whole() {
    const DEFAULT_LIMIT: usize = 65536;
    let s = TestServer::start(json!({})).await;
    let (mut reader, mut ws, _) = publish_exactly(&s, DEFAULT_LIMIT).await;
    let r = ws
        .cmd(json!({"publish": {"channel": "open:big", "data": 1}}))
        .await;
    assert_eq!(r["publish"], json!({}), "{r}");
    assert_eq!(reader.push().await["pub"]["data"], json!(1));
    s.stop().await;
}

#[tokio::test]
async fn message_size_limit_applies_before_connect() {
    let s = TestServer::start(json!({"websocket": {"message_size_limit": 256}})).await;
    let mut ws = Ws::open(&s.ws_url()).await;
    let pad = "x".repeat(300);
    ws.send_text(&format!(r#"{{"id":1,"connect":{{"name":"{pad}"}}}}"#))
        .await;
    assert_eq!(ws.closed().await.0, 1009);
    s.stop().await;
}

/// A client that stops reading while publications pile up is disconnected
/// with 3008 once its queue overflows; a client that keeps up with the same
/// publications stays connected and misses none.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_consumer_is_disconnected_with_3008_and_fast_one_is_not() {
    const QUEUE: usize = 64 * 1024;
    let s = TestServer::start(json!({
        "client": {"queue_max_size": QUEUE},
        "websocket": {"write_timeout": "2s"}
    }))
    .await;
    let mut slow = s.client("slow").await;
    let mut fast = s.client("fast").await;
    for ws in [&mut slow, &mut fast] {
        let r = ws.cmd(json!({"subscribe": {"channel": "feed"}})).await;
        assert_eq!(r["subscribe"], json!({}), "{r}");
    }

    // The fast client reads on its own task and counts what it got, in order.
    let received = Arc::new(AtomicUsize::new(0));
    let counter = received.clone();
    let fast_reader = tokio::spawn(async move {
        loop {
            let p = fast.push().await;
            let data = &p["pub"]["data"];
            if data["end"] == true {
                return fast;
            }
            let n = counter.load(Ordering::SeqCst);
            assert_eq!(
                data["n"],
                json!(n),
                "fast client got publications out of order"
            );
            counter.store(n + 1, Ordering::SeqCst);
        }
    });

    // Publish in batches of half the queue and wait for the fast client to
    // read each batch, so only a client that does not read can overflow.
    let pad = "x".repeat(8 * 1024);
    let batch = QUEUE / 2 / pad.len();
    let mut published = 0usize;
    // Kernel socket buffers take a few MiB before the writer blocks; this
    // bound is far above that.
    let max = 64 * 1024 * 1024 / pad.len();
    while s.node.counters.slow_disconnects.load(Ordering::SeqCst) == 0 {
        assert!(
            published < max,
            "no slow disconnect after {published} publications (clients: {})",
            s.node.hub.num_clients()
        );
        assert_eq!(
            s.node.hub.num_clients(),
            2,
            "the slow client was disconnected for another reason"
        );
        for _ in 0..batch {
            let data = Bytes::from(json!({"n": published, "pad": pad}).to_string());
            s.node
                .publish("feed", data, Default::default())
                .await
                .unwrap();
            published += 1;
        }
        wait_until("the fast client reads the batch", || {
            received.load(Ordering::SeqCst) == published
        })
        .await;
    }

    // The slow client now reads what reached it, then the close frame.
    let mut pushes = 0usize;
    let close = loop {
        match slow.read().await {
            Event::Msg(m) if m.get("push").is_some() => {
                assert_eq!(m["push"]["pub"]["data"]["n"], json!(pushes));
                pushes += 1;
            }
            Event::Msg(m) => panic!("unexpected message to the slow client: {m}"),
            Event::Closed(c) => break c,
        }
    };
    assert_eq!(close, Some((3008, "slow".into())));
    assert!(
        pushes < published,
        "the slow client cannot have got all {published} publications"
    );

    // The fast client got everything and is still connected.
    s.node
        .publish(
            "feed",
            Bytes::from_static(br#"{"end":true}"#),
            Default::default(),
        )
        .await
        .unwrap();
    let mut fast = tokio::time::timeout(WAIT, fast_reader)
        .await
        .expect("fast client reads the end marker")
        .unwrap();
    assert_eq!(received.load(Ordering::SeqCst), published);
    let r = fast.cmd(json!({"ping": {}})).await;
    assert!(r.get("ping").is_some(), "{r}");
    assert_eq!(s.node.counters.slow_disconnects.load(Ordering::SeqCst), 1);
    wait_until("the slow client leaves the hub", || {
        s.node.hub.num_clients() == 1
    })
    .await;
    s.stop().await;
}

#[tokio::test]
async fn channel_limit_allows_exactly_the_limit() {
    const LIMIT: usize = 5;
    let s = TestServer::start(json!({"client": {"channel_limit": LIMIT}})).await;
    let mut ws = s.client("1").await;
    for i in 0..LIMIT {
        let r = ws
            .cmd(json!({"subscribe": {"channel": format!("c{i}")}}))
            .await;
        assert_eq!(r["subscribe"], json!({}), "subscription {i}: {r}");
    }
    let r = ws
        .cmd(json!({"subscribe": {"channel": format!("c{LIMIT}")}}))
        .await;
    assert_eq!(r["error"]["code"], 106, "{r}");
    // The refused subscription is not held: publications there do not arrive,
    // while the others still do.
    s.api(
        "publish",
        json!({"channel": format!("c{LIMIT}"), "data": {"n": 0}}),
    )
    .await;
    s.api("publish", json!({"channel": "c0", "data": {"n": 1}}))
        .await;
    let p = ws.push().await;
    assert_eq!(p["channel"], "c0", "{p}");
    assert_eq!(p["pub"]["data"], json!({"n": 1}));
    s.stop().await;
}

#[tokio::test]
async fn api_body_over_the_limit_gets_413() {
    const LIMIT: usize = 1024;
    let s = TestServer::start(json!({"http_api": {"max_request_body_size": LIMIT}})).await;
    let body_of_len = |len: usize| {
        let overhead = json!({"channel": "x", "data": {"p": ""}}).to_string().len();
        json!({"channel": "x", "data": {"p": "x".repeat(len - overhead)}}).to_string()
    };
    let (status, text) = s
        .api_raw("publish", &body_of_len(LIMIT), Some(API_KEY))
        .await;
    assert_eq!(status, 200, "a body of exactly the limit: {text}");
    let (status, _) = s
        .api_raw("publish", &body_of_len(LIMIT + 1), Some(API_KEY))
        .await;
    assert_eq!(status, 413);
    let (status, _) = s
        .api_raw("publish", &body_of_len(64 * 1024), Some(API_KEY))
        .await;
    assert_eq!(status, 413);
    s.stop().await;
}

#[tokio::test]
async fn a_client_too_slow_with_its_request_headers_is_cut_off() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let s = TestServer::start(json!({"http_server": {"header_read_timeout": "300ms"}})).await;
    let mut slow = tokio::net::TcpStream::connect(s.addr).await.unwrap();
    slow.write_all(b"GET /connection/websocket HTTP/1.1\r\nHost: x\r\n")
        .await
        .unwrap();
    let mut buf = [0u8; 512];
    // The server answers (408) or just closes; either way the socket ends.
    let ended = tokio::time::timeout(WAIT, async {
        loop {
            match slow.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    })
    .await;
    assert!(
        ended.is_ok(),
        "a half-sent handshake must not hold the socket"
    );
    // A normal client is unaffected.
    let mut ws = s.client("u").await;
    assert!(ws.cmd(json!({"ping": {}})).await.get("ping").is_some());
    s.stop().await;
}
