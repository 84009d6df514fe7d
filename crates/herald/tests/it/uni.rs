//! The unidirectional transports (`uni_websocket`, `uni_http_stream`, `uni_sse`): the client's
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

fn uni_http_config() -> Value {
    json!({"uni_http_stream": {"enabled": true}, "uni_sse": {"enabled": true}})
}

#[tokio::test]
async fn uni_http_stream_and_sse_stream_bare_pushes() {
    let s = TestServer::start(uni_http_config()).await;
    let client = reqwest::Client::new();
    let connect =
        |user: &str| json!({"token": token(json!({"sub": user, "channels": ["hist:h"]}))});

    let post = client
        .post(s.http("/connection/uni_http_stream"))
        .body(connect("a").to_string());
    let mut lines = Pushes::open(post, b"\n").await;
    let sse_url = format!(
        "{}?cf_connect={}",
        s.http("/connection/uni_sse"),
        url_encode(&connect("b").to_string())
    );
    let mut events = Pushes::open(client.get(sse_url), b"\n\n").await;
    assert_eq!(events.headers()["content-type"], "text/event-stream");
    let post_sse = client
        .post(s.http("/connection/uni_sse"))
        .body(connect("c").to_string());
    let mut posted = Pushes::open(post_sse, b"\n\n").await;
    for stream in [&mut lines, &mut events, &mut posted] {
        let c = stream.next().await.unwrap();
        assert!(c["connect"]["subs"]["hist:h"]["recoverable"] == true, "{c}");
    }
    publish(&s, "hist:h", 1).await;
    for stream in [&mut lines, &mut events, &mut posted] {
        let p = stream.next().await.unwrap();
        assert_eq!(
            (p["channel"].clone(), p["pub"]["data"]["n"].clone()),
            (json!("hist:h"), json!(1)),
            "{p}"
        );
    }
    // A server disconnect ends the stream with a disconnect push.
    let r = s
        .api(
            "disconnect",
            json!({"user": "a", "disconnect": {"code": 4001, "reason": "bye"}}),
        )
        .await;
    assert!(r.get("error").is_none(), "{r}");
    assert_eq!(lines.next().await.unwrap()["disconnect"]["code"], 4001);
    assert_eq!(lines.next().await, None, "the response ends");
}

#[tokio::test]
async fn uni_http_transports_refuse_bad_connects() {
    let s = TestServer::start(uni_http_config()).await;
    let client = reqwest::Client::new();
    let url = s.http("/connection/uni_http_stream");
    let status = |r: reqwest::Response| r.status().as_u16();
    assert_eq!(
        status(client.post(&url).send().await.unwrap()),
        400,
        "no request"
    );
    let huge = format!("{{\"token\":\"{}\"}}", "x".repeat(70_000));
    assert_eq!(
        status(client.post(&url).body(huge).send().await.unwrap()),
        413
    );
    assert_eq!(
        status(client.post(&url).body("not json").send().await.unwrap()),
        400
    );
    let mut bad = Pushes::open(client.post(&url).body(r#"{"token":"bad"}"#), b"\n").await;
    assert_eq!(bad.next().await.unwrap()["disconnect"]["code"], 3500);
    assert_eq!(bad.next().await, None);
    // An expired token is told as such (3005), over both transports.
    let expired = json!({"token": token(json!({"sub": "u", "exp": 1000}))}).to_string();
    let sse_url = format!(
        "{}?cf_connect={}",
        s.http("/connection/uni_sse"),
        url_encode(&expired)
    );
    let lines: &'static [u8] = b"\n";
    let events: &'static [u8] = b"\n\n";
    for (request, end) in [
        (client.post(&url).body(expired.clone()), lines),
        (client.get(sse_url), events),
    ] {
        let mut stream = Pushes::open(request, end).await;
        assert_eq!(stream.next().await.unwrap()["disconnect"]["code"], 3005);
        assert_eq!(stream.next().await, None);
    }

    let off = TestServer::start(json!({})).await;
    let r = client
        .post(off.http("/connection/uni_http_stream"))
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 404, "off by default");
}

/// Percent-encodes a query value.
pub(crate) fn url_encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// A connect request that stalls halfway gets 408 within
/// `http_server.request_body_timeout`, never a connection held open.
#[tokio::test]
async fn a_stalled_connect_request_times_out() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    let mut cfg = uni_http_config();
    merge(
        &mut cfg,
        json!({"http_server": {"request_body_timeout": "300ms"}}),
    );
    let s = TestServer::start(cfg).await;
    let mut tcp = tokio::net::TcpStream::connect(s.addr).await.unwrap();
    tcp.write_all(
        b"POST /connection/uni_http_stream HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n{\"tok",
    )
    .await
    .unwrap();
    let mut answer = vec![0u8; 256];
    let n = tokio::time::timeout(WAIT, tcp.read(&mut answer))
        .await
        .expect("an answer in time")
        .unwrap();
    let answer = String::from_utf8_lossy(&answer[..n]);
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
}

mod grpc {
    //! `uni_grpc`: Centrifugo's `CentrifugoUniStream.Consume` with a
    //! generated client: a `connect` push, then pushes, recovery through the
    //! connect request's `subs`, refusals and the server's end as a last
    //! `disconnect` push.

    use std::collections::HashMap;

    use futures_util::StreamExt;
    use herald::transport::uni_grpc::proto::centrifugo_uni_stream_client::CentrifugoUniStreamClient;
    use herald_protocol::protobuf::pb;
    use serde_json::json;
    use tonic::transport::Channel;

    use super::publish;
    use herald_testkit::*;

    type Pushes = tonic::Streaming<pb::Push>;

    async fn consume(s: &TestServer, request: pb::ConnectRequest) -> Pushes {
        let url = format!("http://{}", s.uni_grpc.expect("uni_grpc enabled"));
        let channel = Channel::from_shared(url).unwrap().connect().await.unwrap();
        let mut client = CentrifugoUniStreamClient::new(channel);
        client
            .consume(request)
            .await
            .expect("a stream")
            .into_inner()
    }

    /// The next push that is not a ping (an empty push); `None` at the end.
    async fn next(pushes: &mut Pushes) -> Option<pb::Push> {
        loop {
            let push = tokio::time::timeout(WAIT, pushes.next())
                .await
                .expect("a push in time")?
                .expect("no error status");
            if push != pb::Push::default() {
                return Some(push);
            }
        }
    }

    fn request(claims: serde_json::Value) -> pb::ConnectRequest {
        pb::ConnectRequest {
            token: token(claims),
            ..Default::default()
        }
    }

    #[tokio::test]
    async fn pushes_recovery_and_ends_over_uni_grpc() {
        let s = TestServer::start(json!({"uni_grpc": {"enabled": true, "port": 0,
                                                       "address": "127.0.0.1"}}))
        .await;
        let claims = json!({"sub": "g", "channels": ["hist:g"]});
        let mut pushes = consume(&s, request(claims.clone())).await;
        let connect = next(&mut pushes).await.unwrap().connect.expect("connect");
        assert!(!connect.client.is_empty());
        assert!(!connect.pong, "a unidirectional client never answers pings");
        let sub = &connect.subs["hist:g"];
        assert!(sub.recoverable, "{sub:?}");
        publish(&s, "hist:g", 1).await;
        let p = next(&mut pushes).await.unwrap();
        assert_eq!(p.channel, "hist:g");
        let publication = p.r#pub.expect("a publication");
        assert_eq!(publication.data.as_ref(), br#"{"n":1}"#);
        let (epoch, offset) = (sub.epoch.clone(), publication.offset);

        // The server ends it: a last disconnect push, then the end.
        let r = s
            .api(
                "disconnect",
                json!({"user": "g", "disconnect": {"code": 4001, "reason": "bye"}}),
            )
            .await;
        assert!(r.get("error").is_none(), "{r}");
        let d = next(&mut pushes)
            .await
            .unwrap()
            .disconnect
            .expect("disconnect");
        assert_eq!((d.code, d.reason.as_str()), (4001, "bye"));
        assert!(next(&mut pushes).await.is_none());

        // Missed publications come back with the next connect.
        publish(&s, "hist:g", 2).await;
        publish(&s, "hist:g", 3).await;
        let mut again = request(claims);
        let since = pb::SubscribeRequest {
            recover: true,
            epoch,
            offset,
            ..Default::default()
        };
        again.subs = HashMap::from([("hist:g".to_string(), since)]);
        let mut pushes = consume(&s, again).await;
        let connect = next(&mut pushes).await.unwrap().connect.expect("connect");
        let sub = &connect.subs["hist:g"];
        assert!(sub.recovered, "{sub:?}");
        let data: Vec<&[u8]> = sub.publications.iter().map(|p| p.data.as_ref()).collect();
        assert_eq!(data, [&br#"{"n":2}"#[..], &br#"{"n":3}"#[..]]);

        // A bad token: the stream's only push says so.
        let mut refused = consume(
            &s,
            pb::ConnectRequest {
                token: "nope".into(),
                ..Default::default()
            },
        )
        .await;
        let d = next(&mut refused)
            .await
            .unwrap()
            .disconnect
            .expect("disconnect");
        assert_eq!(d.code, 3500);
        assert!(next(&mut refused).await.is_none());
        s.stop().await;
    }

    #[tokio::test]
    async fn uni_grpc_is_off_by_default() {
        let s = TestServer::start(json!({})).await;
        assert!(s.uni_grpc.is_none());
        s.stop().await;
    }
}
