//! Bidirectional emulation: `http_stream` (JSON lines or length-prefixed
//! Protobuf) and `sse` carry the connect reply, later replies and pushes;
//! the client's later commands go to `/emulation`, naming the session and
//! node its connect reply gave. Bad requests get HTTP errors, never a
//! crash; a session of another node is reached through the broker (the
//! cluster tests), a node the cluster does not know is 404.

use bytes::{Buf, Bytes};
use herald_protocol::protobuf::pb;
use prost::Message as _;
use serde_json::{json, Value};

use super::uni::url_encode;
use herald_testkit::*;

fn config() -> Value {
    json!({
        "http_stream": {"enabled": true},
        "sse": {"enabled": true},
        "channel": {"namespaces": [{"name": "room", "allow_subscribe_for_client": true,
            "allow_publish_for_subscriber": true, "allow_presence_for_subscriber": true,
            "allow_history_for_subscriber": true, "presence": true, "history_size": 10,
            "history_ttl": "300s", "force_recovery": true}]}
    })
}

/// An emulated connection as the SDK drives it.
struct Emulated {
    stream: Pushes,
    session: String,
    node: String,
    http: reqwest::Client,
    emulation: String,
    /// Pushes read while waiting for a reply.
    pushes: std::collections::VecDeque<Value>,
}

impl Emulated {
    /// Connects as `user` over `http_stream` (`sse` when `sse`).
    async fn open(s: &TestServer, user: &str, sse: bool) -> (Self, Value) {
        let http = reqwest::Client::new();
        let connect = json!({"id": 1, "connect": {"token": token(json!({"sub": user}))}});
        let mut stream = if sse {
            let url = format!(
                "{}?cf_connect={}",
                s.http("/connection/sse"),
                url_encode(&connect.to_string())
            );
            Pushes::open(http.get(url), b"\n\n").await
        } else {
            let post = http
                .post(s.http("/connection/http_stream"))
                .header("content-type", "application/json")
                .body(connect.to_string());
            Pushes::open(post, b"\n").await
        };
        let reply = stream.next().await.expect("the connect reply");
        assert_eq!(reply["id"], 1, "{reply}");
        let result = reply["connect"].clone();
        let this = Self {
            stream,
            session: result["session"].as_str().expect("a session").to_string(),
            node: result["node"].as_str().expect("a node").to_string(),
            http,
            emulation: s.http("/emulation"),
            pushes: Default::default(),
        };
        (this, result)
    }

    /// Posts `command` to the emulation endpoint; the status.
    async fn send(&self, command: Value) -> u16 {
        let body = json!({"session": self.session, "node": self.node,
                          "data": command.to_string()});
        post(&self.http, &self.emulation, body.to_string()).await
    }

    async fn next(&mut self) -> Value {
        self.stream.next().await.expect("a message")
    }

    /// The reply to command `id`; pushes read meanwhile are kept.
    async fn reply(&mut self, id: u64) -> Value {
        loop {
            let m = self.next().await;
            if m["id"] == id {
                return m;
            }
            if m.get("push").is_some() {
                self.pushes.push_back(m["push"].clone());
            }
        }
    }

    /// The next push, skipping pings and replies.
    async fn push(&mut self) -> Value {
        if let Some(p) = self.pushes.pop_front() {
            return p;
        }
        loop {
            let m = self.next().await;
            if m.get("push").is_some() {
                return m["push"].clone();
            }
        }
    }
}

async fn post(http: &reqwest::Client, url: &str, body: String) -> u16 {
    let r = http
        .post(url)
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await
        .expect("reachable");
    r.status().as_u16()
}

#[tokio::test]
async fn http_stream_and_sse_carry_replies_of_commands_posted_to_emulation() {
    let s = TestServer::start(config()).await;
    for sse in [false, true] {
        let (mut c, result) = Emulated::open(&s, "ann", sse).await;
        let channel = if sse { "room:sse" } else { "room:hs" };
        assert!(!c.session.is_empty() && !c.node.is_empty(), "{result}");
        assert!(result["client"].is_string());
        if sse {
            assert_eq!(c.stream.headers()["content-type"], "text/event-stream");
        }
        assert_eq!(
            c.send(json!({"id": 2, "subscribe": {"channel": channel}}))
                .await,
            204
        );
        let r = c.reply(2).await;
        assert!(r["subscribe"]["recoverable"] == true, "{r}");
        // A publication from the client, through emulation, and one from
        // the server API, both over the stream.
        assert_eq!(
            c.send(json!({"id": 3, "publish": {"channel": channel, "data": {"n": 1}}}))
                .await,
            204
        );
        assert!(c.reply(3).await.get("error").is_none());
        let p = c.push().await;
        assert_eq!(
            (&p["channel"], &p["pub"]["data"]),
            (&json!(channel), &json!({"n": 1}))
        );
        // Several commands in one request, as the SDK batches them.
        let commands = [
            json!({"id": 4, "presence": {"channel": channel}}),
            json!({"id": 5, "history": {"channel": channel, "limit": 10}}),
        ];
        let data = format!("{}\n{}", commands[0], commands[1]);
        let batch = json!({"session": c.session, "node": c.node, "data": data});
        assert_eq!(post(&c.http, &c.emulation, batch.to_string()).await, 204);
        let r = c.reply(4).await;
        assert_eq!(
            r["presence"]["presence"].as_object().map(|p| p.len()),
            Some(1),
            "{r}"
        );
        let r = c.reply(5).await;
        assert_eq!(
            r["history"]["publications"].as_array().unwrap().len(),
            1,
            "{r}"
        );
        // The server ends it: a disconnect push, then the end.
        let r = s
            .api(
                "disconnect",
                json!({"user": "ann", "disconnect": {"code": 4001, "reason": "bye"}}),
            )
            .await;
        assert!(r.get("error").is_none(), "{r}");
        assert_eq!(c.push().await["disconnect"]["code"], 4001);
        assert_eq!(c.stream.next().await, None, "the response ends");
        // Its session is gone from the hub: a request for it finds nothing.
        eventually("the session forgotten", || async {
            s.node.hub.by_session(&c.session).is_none()
        })
        .await;
        assert_eq!(
            c.send(json!({"id": 6, "presence": {"channel": channel}}))
                .await,
            204
        );
    }
    s.stop().await;
}

#[tokio::test]
async fn a_session_is_reached_only_with_its_own_id() {
    let s = TestServer::start(config()).await;
    let (mut ann, result) = Emulated::open(&s, "ann", false).await;
    let (bob, _) = Emulated::open(&s, "bob", false).await;
    assert_ne!(ann.session, bob.session);
    // Bob knows Ann's client id (presence shows it), not her session.
    let ann_client = result["client"].as_str().unwrap();
    assert!(s.node.hub.by_session(ann_client).is_none());
    let forged = json!({"session": ann_client, "node": ann.node,
                        "data": "{\"id\":9,\"subscribe\":{\"channel\":\"room:b\"}}"});
    assert_eq!(
        post(&bob.http, &bob.emulation, forged.to_string()).await,
        204
    );
    assert_eq!(
        ann.send(json!({"id": 2, "subscribe": {"channel": "room:c"}}))
            .await,
        204
    );
    // Ann's stream has the reply to her own command, and nothing of Bob's.
    loop {
        let m = ann.next().await;
        assert_ne!(m["id"], 9, "a forged command ran: {m}");
        if m["id"] == 2 {
            assert!(m.get("error").is_none(), "{m}");
            break;
        }
    }
    let r = s.api("presence", json!({"channel": "room:b"})).await;
    assert_eq!(
        r["result"]["presence"],
        json!({}),
        "nobody subscribed to room:b"
    );
    s.stop().await;
}

#[tokio::test]
async fn bad_emulation_requests_get_http_errors() {
    let s = TestServer::start(config()).await;
    let (mut c, _) = Emulated::open(&s, "ann", false).await;
    let url = &c.emulation.clone();
    for (body, status) in [
        ("not json".to_string(), 400),
        (json!({"node": c.node, "data": "{}"}).to_string(), 400),
        (
            json!({"session": c.session, "node": c.node, "data": 5}).to_string(),
            400,
        ),
        (
            json!({"session": c.session, "node": "no-such-node", "data": "{}"}).to_string(),
            404,
        ),
        (
            format!(
                "{{\"session\":\"{}\",\"data\":\"{}\"}}",
                c.session,
                "x".repeat(70_000)
            ),
            413,
        ),
    ] {
        assert_eq!(post(&c.http, url, body.clone()).await, status, "{body:.80}");
    }
    // Protobuf that is not an emulation request.
    let r = c
        .http
        .post(url)
        .header("content-type", "application/octet-stream")
        .body(vec![0xff, 0xff, 0xff])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 400);
    // Garbage commands for a real session: the connection says so and
    // closes (as a WebSocket one would), the server lives on.
    let bad = json!({"session": c.session, "node": c.node, "data": "not a command"});
    assert_eq!(post(&c.http, url, bad.to_string()).await, 204);
    assert_eq!(c.push().await["disconnect"]["code"], 3501);

    // A first command that is not a connect, and a refused connect.
    let http = reqwest::Client::new();
    let stream = s.http("/connection/http_stream");
    let r = http
        .post(&stream)
        .body(json!({"id": 1, "presence": {"channel": "room:a"}}).to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 400);
    let bad_token = json!({"id": 1, "connect": {"token": "nope"}}).to_string();
    let mut refused = Pushes::open(http.post(&stream).body(bad_token), b"\n").await;
    assert_eq!(
        refused.next().await.unwrap()["push"]["disconnect"]["code"],
        3500
    );
    assert_eq!(refused.next().await, None);

    // Off by default, and WebSocket can be turned off.
    let off = TestServer::start(json!({"websocket": {"disabled": true}})).await;
    for path in ["/connection/http_stream", "/connection/sse", "/emulation"] {
        let r = http.post(off.http(path)).body("{}").send().await.unwrap();
        assert_eq!(r.status().as_u16(), 404, "{path}");
    }
    let r = http
        .get(off.http("/connection/websocket"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 404, "websocket.disabled");
    s.stop().await;
}

/// Replies of a Protobuf `http_stream`, read as they come.
struct PbStream {
    response: reqwest::Response,
    buf: Vec<u8>,
}

impl PbStream {
    async fn next(&mut self) -> pb::Reply {
        loop {
            let mut view: &[u8] = &self.buf;
            if let Ok(len) = prost::encoding::decode_varint(&mut view) {
                let header = self.buf.len() - view.len();
                if view.len() >= len as usize {
                    let reply = pb::Reply::decode(&view[..len as usize]).unwrap();
                    self.buf.drain(..header + len as usize);
                    return reply;
                }
            }
            let chunk = tokio::time::timeout(WAIT, self.response.chunk())
                .await
                .expect("a chunk in time")
                .expect("readable")
                .expect("not the end");
            self.buf.extend_from_slice(chunk.chunk());
        }
    }
}

#[tokio::test]
async fn http_stream_speaks_protobuf_with_binary_emulation_requests() {
    let s = TestServer::start(config()).await;
    let http = reqwest::Client::new();
    let connect = pb::Command {
        id: 1,
        connect: Some(pb::ConnectRequest {
            token: token(json!({"sub": "pb"})),
            ..Default::default()
        }),
        ..Default::default()
    };
    let response = http
        .post(s.http("/connection/http_stream"))
        .header("content-type", "application/octet-stream")
        .body(connect.encode_length_delimited_to_vec())
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 200);
    assert_eq!(
        response.headers()["content-type"],
        "application/octet-stream"
    );
    let mut stream = PbStream {
        response,
        buf: Vec::new(),
    };
    let result = stream.next().await.connect.expect("the connect reply");
    assert!(!result.session.is_empty() && !result.node.is_empty());
    let commands = [
        pb::Command {
            id: 2,
            subscribe: Some(pb::SubscribeRequest {
                channel: "room:p".into(),
                ..Default::default()
            }),
            ..Default::default()
        },
        pb::Command {
            id: 3,
            publish: Some(pb::PublishRequest {
                channel: "room:p".into(),
                data: Bytes::from_static(b"{\"pb\":true}"),
            }),
            ..Default::default()
        },
    ];
    let data: Vec<u8> = commands
        .iter()
        .flat_map(|c| c.encode_length_delimited_to_vec())
        .collect();
    let request = pb::EmulationRequest {
        node: result.node.clone(),
        session: result.session.clone(),
        data: data.into(),
    };
    let r = http
        .post(s.http("/emulation"))
        .header("content-type", "application/octet-stream")
        .body(request.encode_to_vec())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 204);
    let mut got = Vec::new();
    while got.len() < 3 {
        let reply = stream.next().await;
        if reply.id == 0 && reply.push.is_none() {
            continue; // a ping
        }
        got.push(reply);
    }
    assert_eq!(got[0].id, 2, "{got:?}");
    assert!(got[0].subscribe.is_some());
    let publication = got.iter().find_map(|r| r.push.as_ref()?.r#pub.clone());
    assert_eq!(publication.unwrap().data.as_ref(), b"{\"pb\":true}");
    assert!(got.iter().any(|r| r.id == 3 && r.error.is_none()));
    s.stop().await;
}

/// Commands posted for a connection count towards its queue's byte limit
/// like what it is sent: a client posting faster than its stream drains is
/// closed as too slow (3008), never queued without bound.
#[tokio::test]
async fn posted_commands_count_towards_the_queue_limit() {
    let mut c = config();
    merge(&mut c, json!({"client": {"queue_max_size": 1024}}));
    let s = TestServer::start(c).await;
    let (mut c, _) = Emulated::open(&s, "ann", false).await;
    // Pongs need no reply: only their own size can overflow the queue.
    let pongs = vec!["{}"; 600].join("\n");
    let request = json!({"session": c.session, "node": c.node, "data": pongs});
    assert_eq!(post(&c.http, &c.emulation, request.to_string()).await, 204);
    assert_eq!(c.push().await["disconnect"]["code"], 3008);
    assert_eq!(c.stream.next().await, None);
    s.stop().await;
}

/// Pages of allowed origins may call the streaming transports and the
/// emulation endpoint from another origin (CORS, preflight included); other
/// origins are refused.
#[tokio::test]
async fn allowed_origins_get_cors_answers() {
    let mut c = config();
    merge(
        &mut c,
        json!({"client": {"allowed_origins": ["https://app.example"]}}),
    );
    let s = TestServer::start(c).await;
    let http = reqwest::Client::new();
    for path in ["/connection/http_stream", "/connection/sse", "/emulation"] {
        let r = http
            .request(reqwest::Method::OPTIONS, s.http(path))
            .header("origin", "https://app.example")
            .header("access-control-request-method", "POST")
            .header("access-control-request-headers", "content-type")
            .send()
            .await
            .unwrap();
        assert_eq!(r.status().as_u16(), 204, "{path}");
        let h = r.headers();
        assert_eq!(h["access-control-allow-origin"], "https://app.example");
        assert_eq!(h["access-control-allow-credentials"], "true");
        assert_eq!(h["access-control-allow-headers"], "content-type");
        assert!(h["access-control-allow-methods"]
            .to_str()
            .unwrap()
            .contains("POST"));
    }
    let connect = json!({"id": 1, "connect": {"token": token(json!({"sub": "x"}))}});
    let r = http
        .post(s.http("/connection/http_stream"))
        .header("origin", "https://app.example")
        .body(connect.to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    assert_eq!(
        r.headers()["access-control-allow-origin"],
        "https://app.example"
    );
    drop(r);
    let r = http
        .post(s.http("/emulation"))
        .header("origin", "https://evil.example")
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 403);
    assert!(r.headers().get("access-control-allow-origin").is_none());
    s.stop().await;
}

/// A client that stops reading its stream is closed as too slow once its
/// queue overflows, even while the response waits on it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_nobody_reads_is_closed_as_too_slow() {
    let mut c = config();
    merge(
        &mut c,
        json!({"client": {"queue_max_size": 65536}, "websocket": {"write_timeout": "30s"}}),
    );
    let s = TestServer::start(c).await;
    let (c, _) = Emulated::open(&s, "ann", false).await;
    assert_eq!(
        c.send(json!({"id": 2, "subscribe": {"channel": "room:slow"}}))
            .await,
        204
    );
    eventually("subscribed", || async {
        let r = s.api("presence", json!({"channel": "room:slow"})).await;
        r["result"]["presence"]
            .as_object()
            .is_some_and(|p| p.len() == 1)
    })
    .await;
    overflow(&s, "room:slow", |_, pad| json!({ "pad": pad })).await;
    eventually("the session gone", || async {
        s.node.hub.by_session(&c.session).is_none()
    })
    .await;
    s.stop().await;
}

#[test]
fn transport_paths_must_be_paths_of_their_own() {
    let cases = [
        (
            json!({"http_stream": {"enabled": true}, "emulation": {"handler_prefix": "emulation"}}),
            "emulation.handler_prefix",
        ),
        (
            json!({"sse": {"enabled": true, "handler_prefix": "/connection/websocket"}}),
            "sse.handler_prefix",
        ),
    ];
    for (config, key) in cases {
        let err = config_refusal(&config);
        assert!(err.contains(key), "{key}: {err}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replies_on_streams_are_not_held_by_a_write_delay() {
    let mut cfg = config();
    merge(&mut cfg, json!({"client": {"write_delay": "1s"}}));
    let s = TestServer::start(cfg).await;
    let limit = std::time::Duration::from_millis(600);
    for sse in [false, true] {
        let opened = std::time::Instant::now();
        let (mut e, _) = Emulated::open(&s, "alice", sse).await;
        assert!(
            opened.elapsed() < limit,
            "the connect reply took {:?}",
            opened.elapsed()
        );
        let asked = std::time::Instant::now();
        assert_eq!(
            e.send(json!({"id": 2, "subscribe": {"channel": "room:w"}}))
                .await,
            204
        );
        assert!(e.reply(2).await.get("subscribe").is_some());
        assert!(
            asked.elapsed() < limit,
            "the subscribe reply took {:?}",
            asked.elapsed()
        );
        // A publication waits out the delay; a command's reply does not,
        // and takes it along.
        s.api("publish", json!({"channel": "room:w", "data": {"n": 1}}))
            .await;
        let asked = std::time::Instant::now();
        assert_eq!(
            e.send(json!({"id": 3, "presence": {"channel": "room:w"}}))
                .await,
            204
        );
        assert!(e.reply(3).await.get("presence").is_some());
        assert!(
            asked.elapsed() < limit,
            "the presence reply took {:?}",
            asked.elapsed()
        );
        assert_eq!(e.push().await["pub"]["data"]["n"], 1);
    }
    s.stop().await;
}
