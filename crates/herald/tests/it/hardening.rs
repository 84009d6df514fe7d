//! What an attacker or a broken client might send, and that it hurts no
//! one else.

use serde_json::{json, Value};

use herald_testkit::*;

/// A durable namespace on SQLite, or on PostgreSQL with `db`.
fn durable(db: Option<&TestDatabase>) -> Value {
    let mut cfg = json!({"channel": {"namespaces": [
        { "name": "dur", "history_storage": "durable", "allow_subscribe_for_client": true,
          "allow_publish_for_client": true, "allow_history_for_client": true }
    ]}});
    if let Some(db) = db {
        merge(
            &mut cfg,
            json!({"storage": {"type": "postgres", "postgres": {"url": db.url}}}),
        );
    }
    cfg
}

/// A channel name with a NUL (or any control character) is refused with
/// 107 on every path, and publishers around it are not hurt: on PostgreSQL
/// such a name once failed the whole group commit it joined.
async fn control_characters_in_channel_names(db: Option<&TestDatabase>) {
    let s = TestServer::start(durable(db)).await;
    const GOOD: usize = 200;
    let good = (0..GOOD).map(|n| {
        s.api(
            "publish",
            json!({"channel": format!("dur:good{}", n % 4), "data": {"n": n}}),
        )
    });
    let bad = async {
        let mut ws = s.client("mallory").await;
        for channel in ["dur:a\u{0}b", "dur:a\nb", "dur:\u{7f}"] {
            let r = ws
                .cmd(json!({"publish": {"channel": channel, "data": {}}}))
                .await;
            assert_eq!(r["error"]["code"], 107, "{r}");
            let r = ws.cmd(json!({"subscribe": {"channel": channel}})).await;
            assert_eq!(r["error"]["code"], 107, "{r}");
            for method in ["publish", "history", "presence", "history_remove"] {
                let r = s.api(method, json!({"channel": channel, "data": {}})).await;
                assert_eq!(r["error"]["code"], 107, "{method}: {r}");
            }
        }
    };
    let (replies, ()) = tokio::join!(futures_util::future::join_all(good), bad);
    for r in &replies {
        assert!(r["result"]["offset"].as_u64().is_some(), "{r}");
    }
    let stored: u64 = futures_util::future::join_all(
        (0..4).map(|i| s.api("history", json!({"channel": format!("dur:good{i}")}))),
    )
    .await
    .iter()
    .map(|h| h["result"]["offset"].as_u64().unwrap())
    .sum();
    assert_eq!(stored as usize, GOOD, "every good publication stored once");
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn control_characters_in_channel_names_on_sqlite() {
    control_characters_in_channel_names(None).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn control_characters_in_channel_names_on_postgres() {
    if let Some(db) = TestDatabase::create() {
        control_characters_in_channel_names(Some(&db)).await;
    }
}

/// A publication larger than a subscriber's queue could hold is refused at
/// publish time (106) instead of closing every subscriber as too slow; one
/// that fits goes through; a recovery larger than the queue is refused as
/// impossible (`recovered: false`) instead of closing the client on every
/// attempt.
#[tokio::test]
async fn publications_and_recoveries_must_fit_a_subscribers_queue() {
    const QUEUE: usize = 128 * 1024;
    let s = TestServer::start(json!({
        "client": {"queue_max_size": QUEUE},
        "websocket": {"message_size_limit": QUEUE},
        "channel": {"namespaces": [{"name": "big", "history_size": 10, "history_ttl": "60s",
            "force_recovery": true, "allow_subscribe_for_client": true,
            "allow_publish_for_client": true}]}
    }))
    .await;
    let mut sub = s.client("reader").await;
    let r = sub.cmd(json!({"subscribe": {"channel": "big:x"}})).await;
    let epoch = r["subscribe"]["epoch"].as_str().unwrap().to_string();
    // The limit: what the queue leaves after the channel name and the
    // push around the data (8 KiB).
    let room = QUEUE - 255 - 8 * 1024;
    let data = |size: usize| json!("x".repeat(size - 2));
    let too_big = s
        .api(
            "publish",
            json!({"channel": "big:x", "data": data(room + 1)}),
        )
        .await;
    assert_eq!(too_big["error"]["code"], 106, "{too_big}");
    let edge = s
        .api(
            "publish",
            json!({"channel": "big:edge", "data": data(room)}),
        )
        .await;
    assert!(edge["result"]["offset"].is_u64(), "at the limit: {edge}");
    let mut publisher = s.client("writer").await;
    let r = publisher
        .cmd(json!({"publish": {"channel": "big:x", "data": data(room + 1)}}))
        .await;
    assert_eq!(r["error"]["code"], 106, "{r}");
    // Three that fit one by one, but not all at once in a recovery.
    for _ in 0..3 {
        let r = s
            .api(
                "publish",
                json!({"channel": "big:x", "data": data(room / 2)}),
            )
            .await;
        assert!(r["result"]["offset"].is_u64(), "{r}");
    }
    for offset in 1..=3 {
        assert_eq!(sub.push().await["pub"]["offset"], offset);
    }
    let mut late = s.client("late").await;
    let r = late
        .cmd(json!({"subscribe": {"channel": "big:x", "recover": true, "offset": 0, "epoch": epoch}}))
        .await;
    let res = &r["subscribe"];
    assert_eq!(res["was_recovering"], true, "{r}");
    assert_eq!(res.get("recovered"), None, "not recovered: {r}");
    assert!(res.get("publications").is_none(), "{r}");
    assert_eq!(res["offset"], 3);
    // Everyone is still connected.
    for ws in [&mut sub, &mut late, &mut publisher] {
        assert!(ws.cmd(json!({"ping": {}})).await.get("ping").is_some());
    }
    s.stop().await;
}

/// Reads from `socket` until the server closes it (EOF or reset); fails
/// after [`WAIT`].
async fn closed_by_server(socket: &mut tokio::net::TcpStream) {
    use tokio::io::AsyncReadExt;
    let mut buf = [0u8; 512];
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        match tokio::time::timeout_at(deadline, socket.read(&mut buf)).await {
            Err(_) => panic!("the server kept a silent connection open"),
            Ok(Ok(0) | Err(_)) => return,
            Ok(Ok(_)) => {} // an error response first, then the close
        }
    }
}

/// No phase of a connection may stall for free: a socket that sends
/// nothing, only the start of the HTTP/2 preface, or half its headers is
/// closed after `http_server.header_read_timeout`; an API body that stalls
/// gets 408 after `http_server.request_body_timeout`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_and_stalled_connections_are_closed() {
    use tokio::io::AsyncWriteExt;
    let s = TestServer::start(json!({"http_server": {
        "header_read_timeout": "300ms", "request_body_timeout": "300ms"
    }}))
    .await;
    let mut sockets = Vec::new();
    for i in 0..30 {
        let mut socket = tokio::net::TcpStream::connect(s.addr).await.unwrap();
        match i % 3 {
            0 => {}
            1 => socket.write_all(b"P").await.unwrap(),
            _ => socket
                .write_all(b"GET /health HTTP/1.1\r\nHost: x\r\n")
                .await
                .unwrap(),
        }
        sockets.push(socket);
    }
    for socket in &mut sockets {
        closed_by_server(socket).await;
    }
    // A request body that stops halfway.
    let mut socket = tokio::net::TcpStream::connect(s.addr).await.unwrap();
    let head = format!(
        "POST /api/info HTTP/1.1\r\nHost: x\r\nX-API-Key: {API_KEY}\r\nContent-Length: 100\r\n\r\n{{\"a\":"
    );
    socket.write_all(head.as_bytes()).await.unwrap();
    let mut reply = Vec::new();
    let read = tokio::time::timeout(WAIT, async {
        use tokio::io::AsyncReadExt;
        let mut buf = [0u8; 512];
        while !reply.windows(4).any(|w| w == b"\r\n\r\n") {
            let n = socket.read(&mut buf).await.unwrap();
            assert!(n > 0, "closed without a reply");
            reply.extend_from_slice(&buf[..n]);
        }
    })
    .await;
    assert!(read.is_ok(), "no reply to a stalled body");
    let text = String::from_utf8_lossy(&reply);
    assert!(text.starts_with("HTTP/1.1 408"), "{text}");
    // Well-behaved clients are served throughout.
    let info = s.api("info", json!({})).await;
    assert!(info["result"]["nodes"].is_array(), "{info}");
    s.stop().await;
}

/// Opens a WebSocket from `source` (a loopback address of the test's
/// choice) and says how the upgrade went: `Ok` or the error's text.
async fn open_from(source: &str, server: std::net::SocketAddr) -> Result<(), String> {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind(format!("{source}:0").parse().unwrap()).unwrap();
    let stream = socket.connect(server).await.map_err(|e| e.to_string())?;
    let url = format!("ws://{server}/connection/websocket");
    tokio_tungstenite::client_async(url, stream)
        .await
        .map(drop)
        .map_err(|e| e.to_string())
}

/// `client.connection_rate_limit` holds the node to its rate of new
/// connections (HTTP 503 beyond), `client.connection_rate_limit_per_ip`
/// each address to its own (HTTP 429 beyond) while other addresses go on.
#[tokio::test]
async fn new_connections_are_rate_limited() {
    let s = TestServer::start(json!({"client": {"connection_rate_limit_per_ip": 3}})).await;
    for _ in 0..3 {
        open_from("127.0.0.1", s.addr).await.unwrap();
    }
    let refused = open_from("127.0.0.1", s.addr).await.unwrap_err();
    assert!(refused.contains("429"), "{refused}");
    // Another address has a bucket of its own.
    open_from("127.0.0.2", s.addr).await.unwrap();
    let metrics = reqwest::get(s.http("/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains("herald_connections_rate_limited_total 1"),
        "{metrics}"
    );
    s.stop().await;

    let s = TestServer::start(json!({"client": {"connection_rate_limit": 4}})).await;
    for i in 0..4 {
        open_from(&format!("127.0.0.{}", i + 1), s.addr)
            .await
            .unwrap();
    }
    let refused = open_from("127.0.0.9", s.addr).await.unwrap_err();
    assert!(refused.contains("503"), "{refused}");
    s.stop().await;
}

/// `client.command_rate_limit`: commands of a limited kind beyond their rate
/// get error 111 and the connection stays; other kinds are not counted.
#[tokio::test]
async fn commands_are_rate_limited_by_kind() {
    let s = TestServer::start(json!({"client": {"command_rate_limit": {"publish": 2}}})).await;
    let mut ws = s.client("u").await;
    ws.cmd(json!({"subscribe": {"channel": "chat:r"}})).await;
    let publish = json!({"publish": {"channel": "chat:r", "data": 1}});
    for _ in 0..2 {
        let r = ws.cmd(publish.clone()).await;
        assert!(r.get("publish").is_some(), "{r}");
    }
    let r = ws.cmd(publish.clone()).await;
    assert_eq!(r["error"]["code"], 111, "{r}");
    assert_eq!(r["error"]["temporary"], true, "{r}");
    // Subscribing and pinging are not limited here.
    for n in 0..5 {
        let r = ws
            .cmd(json!({"subscribe": {"channel": format!("chat:n{n}")}}))
            .await;
        assert!(r.get("subscribe").is_some(), "{r}");
    }
    // Half a second refills one publish (time must pass: the bucket refills
    // with it, not on an event).
    tokio::time::sleep(std::time::Duration::from_millis(600)).await;
    let r = ws.cmd(publish).await;
    assert!(r.get("publish").is_some(), "{r}");
    s.stop().await;
}
