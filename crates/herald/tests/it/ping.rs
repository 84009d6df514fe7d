//! Server pings: what the connect reply advertises, clients that answer stay,
//! clients that do not are closed with 3012, and a zero pong timeout only
//! pings.

use std::time::Duration;

use serde_json::{json, Value};

use herald_testkit::*;

fn fast_pings(pong_timeout: &str) -> Value {
    json!({"client": {"ping_interval": "1s", "pong_timeout": pong_timeout}})
}

async fn connect(s: &TestServer, user: &str) -> (Ws, Value) {
    let mut ws = Ws::open(&s.ws_url()).await;
    let r = ws
        .cmd(json!({"connect": {"token": token(json!({"sub": user}))}}))
        .await;
    assert!(r.get("connect").is_some(), "{r}");
    (ws, r["connect"].clone())
}

/// Reads until `n` pings have arrived, answering each when `answer`; any
/// other message or a close fails the test.
async fn await_pings(ws: &mut Ws, n: usize, answer: bool) {
    for _ in 0..n {
        match ws.read().await {
            Event::Msg(m) if m == json!({}) => {
                if answer {
                    ws.pong().await;
                }
            }
            e => panic!("expected a ping, got {e:?}"),
        }
    }
}

#[tokio::test]
async fn connect_reply_advertises_ping_and_pong() {
    let s = TestServer::start(fast_pings("500ms")).await;
    let (_ws, c) = connect(&s, "1").await;
    assert_eq!(c["ping"], 1, "{c}");
    assert_eq!(c["pong"], true, "{c}");
    s.stop().await;
}

#[tokio::test]
async fn client_that_answers_pings_stays_connected() {
    let s = TestServer::start(fast_pings("500ms")).await;
    let (mut ws, _) = connect(&s, "1").await;
    let r = ws.cmd(json!({"subscribe": {"channel": "news"}})).await;
    assert_eq!(r["subscribe"], json!({}), "{r}");
    let started = tokio::time::Instant::now();
    await_pings(&mut ws, 4, true).await;
    assert!(
        started.elapsed() >= Duration::from_millis(3500),
        "four pings at a 1s interval came in {:?}",
        started.elapsed()
    );
    s.api(
        "publish",
        json!({"channel": "news", "data": {"still": "here"}}),
    )
    .await;
    assert_eq!(ws.push().await["pub"]["data"], json!({"still": "here"}));
    let r = ws.cmd(json!({"ping": {}})).await;
    assert!(r.get("ping").is_some(), "{r}");
    s.stop().await;
}

#[tokio::test]
async fn client_that_does_not_answer_is_closed_with_3012() {
    let s = TestServer::start(fast_pings("500ms")).await;
    let (mut ws, _) = connect(&s, "1").await;
    await_pings(&mut ws, 1, false).await;
    let started = tokio::time::Instant::now();
    match ws.read().await {
        Event::Closed(c) => assert_eq!(c, Some((3012, "no pong".into()))),
        Event::Msg(m) => panic!("expected the close after one unanswered ping, got {m}"),
    }
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(400) && took < Duration::from_secs(5),
        "closed {took:?} after the ping; expected the pong timeout"
    );
    wait_until("the client leaves the hub", || {
        s.node.hub.num_clients() == 0
    })
    .await;
    s.stop().await;
}

#[tokio::test]
async fn zero_pong_timeout_pings_without_expecting_pongs() {
    let s = TestServer::start(fast_pings("0s")).await;
    let (mut ws, c) = connect(&s, "1").await;
    assert_eq!(c["ping"], 1, "{c}");
    assert_ne!(c["pong"], true, "{c}");
    await_pings(&mut ws, 3, false).await;
    let r = ws.cmd(json!({"ping": {}})).await;
    assert!(
        r.get("ping").is_some(),
        "still connected after 3 unanswered pings: {r}"
    );
    assert_eq!(s.node.hub.num_clients(), 1);
    s.stop().await;
}

#[tokio::test]
async fn zero_ping_interval_disables_pings() {
    let s = TestServer::start(json!({"client": {"ping_interval": "0s"}})).await;
    let (_ws, c) = connect(&s, "1").await;
    assert_ne!(c["pong"], true, "{c}");
    assert!(
        c["ping"].is_null() || c["ping"] == 0,
        "no ping interval advertised: {c}"
    );
    s.stop().await;
}
