//! The unidirectional WebSocket transport (`uni_websocket`): the client's
//! one message is its connect request; the server answers with a bare
//! `{"connect":…}` and then pushes bare push objects, one per message.

use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

use herald_testkit::*;

type Socket = WebSocketStream<MaybeTlsStream<TcpStream>>;

fn uni_config() -> Value {
    json!({"uni_websocket": {"enabled": true}})
}

async fn open(s: &TestServer, request: Value) -> Socket {
    let url = format!("ws://{}/connection/uni_websocket", s.addr);
    let (mut socket, _) = tokio::time::timeout(WAIT, tokio_tungstenite::connect_async(url))
        .await
        .expect("upgrade in time")
        .expect("upgrade");
    socket
        .send(Message::text(request.to_string()))
        .await
        .unwrap();
    socket
}

/// The next message: one JSON object, or the close code.
async fn next(socket: &mut Socket) -> Result<Value, Option<u16>> {
    loop {
        let msg = tokio::time::timeout(WAIT, socket.next())
            .await
            .expect("message in time");
        match msg {
            Some(Ok(Message::Text(t))) => {
                return Ok(serde_json::from_str(&t).unwrap_or_else(|e| panic!("{t:?}: {e}")))
            }
            Some(Ok(Message::Close(f))) => return Err(f.map(|f| u16::from(f.code))),
            Some(Ok(_)) => {}
            _ => return Err(None),
        }
    }
}

async fn publish(s: &TestServer, channel: &str, n: u64) {
    let r = s
        .api("publish", json!({"channel": channel, "data": {"n": n}}))
        .await;
    assert!(r.get("error").is_none(), "{r}");
}

#[tokio::test]
async fn uni_websocket_pushes_bare_messages_and_recovers() {
    let s = TestServer::start(uni_config()).await;
    let claims = json!({"sub": "u1", "channels": ["hist:uni"]});
    let mut ws = open(&s, json!({"token": token(claims.clone())})).await;
    let connect = next(&mut ws).await.unwrap();
    let c = &connect["connect"];
    assert!(c["client"].is_string(), "{connect}");
    assert!(
        c.get("pong").is_none(),
        "a uni client does not pong: {connect}"
    );
    let epoch = c["subs"]["hist:uni"]["epoch"].as_str().unwrap().to_string();
    for n in 1..=3 {
        publish(&s, "hist:uni", n).await;
    }
    for n in 1..=3u64 {
        // One push per message, bare.
        let push = next(&mut ws).await.unwrap();
        assert_eq!(push["channel"], "hist:uni", "{push}");
        assert_eq!(push["pub"]["data"]["n"], n, "{push}");
        assert_eq!(push["pub"]["offset"], n, "{push}");
    }
    drop(ws);

    // Reconnecting with the position recovers what was missed.
    publish(&s, "hist:uni", 4).await;
    let request = json!({
        "token": token(claims),
        "subs": {"hist:uni": {"recover": true, "offset": 3, "epoch": epoch}}
    });
    let mut ws = open(&s, request).await;
    let connect = next(&mut ws).await.unwrap();
    let sub = &connect["connect"]["subs"]["hist:uni"];
    assert_eq!(sub["recovered"], true, "{connect}");
    assert_eq!(sub["publications"][0]["data"]["n"], 4, "{connect}");
    // Server API commands reach it like any connection.
    let r = s
        .api(
            "disconnect",
            json!({"user": "u1", "disconnect": {"code": 4001, "reason": "bye"}}),
        )
        .await;
    assert!(r.get("error").is_none(), "{r}");
    assert_eq!(next(&mut ws).await, Err(Some(4001)));
}

#[tokio::test]
async fn uni_websocket_needs_no_pongs() {
    let mut cfg = uni_config();
    merge(
        &mut cfg,
        json!({"client": {"ping_interval": "1s", "pong_timeout": "500ms"}}),
    );
    let s = TestServer::start(cfg).await;
    let mut ws = open(&s, json!({"token": token(json!({"sub": "u"}))})).await;
    assert!(next(&mut ws).await.unwrap().get("connect").is_some());
    // Two pings, each `{}`, and still open past their pong timeouts.
    for _ in 0..2 {
        assert_eq!(next(&mut ws).await.unwrap(), json!({}));
    }
    let r = s
        .api(
            "disconnect",
            json!({"user": "u", "disconnect": {"code": 4002, "reason": "x"}}),
        )
        .await;
    assert!(r.get("error").is_none(), "{r}");
    loop {
        match next(&mut ws).await {
            Ok(v) => assert_eq!(v, json!({}), "only pings"),
            Err(code) => {
                assert_eq!(
                    code,
                    Some(4002),
                    "closed by the API, not for a missing pong"
                );
                break;
            }
        }
    }
}

#[tokio::test]
async fn uni_websocket_closes_on_bad_connects_and_is_off_by_default() {
    let s = TestServer::start(uni_config()).await;
    let mut ws = open(&s, json!({"token": "not a token"})).await;
    assert_eq!(next(&mut ws).await, Err(Some(3500)));
    let expired = token(json!({"sub": "u", "exp": now() - 3600}));
    let mut ws = open(&s, json!({"token": expired})).await;
    assert_eq!(next(&mut ws).await, Err(Some(3005)));
    let url = format!("ws://{}/connection/uni_websocket", s.addr);
    let mut ws = {
        let (socket, _) = tokio_tungstenite::connect_async(url).await.unwrap();
        socket
    };
    ws.send(Message::text("not json")).await.unwrap();
    assert_eq!(next(&mut ws).await, Err(Some(3501)));

    let off = TestServer::start(json!({})).await;
    let url = format!("ws://{}/connection/uni_websocket", off.addr);
    assert!(
        tokio_tungstenite::connect_async(url).await.is_err(),
        "not served by default"
    );
}
