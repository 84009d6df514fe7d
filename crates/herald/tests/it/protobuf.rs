//! The Protobuf format over WebSocket: negotiated by subprotocol or query
//! as the SDKs do, length-prefixed commands and replies in binary frames,
//! sharing channels with JSON clients; bad input gets an error or a close,
//! never a crash.

use std::collections::VecDeque;

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use herald_protocol::protobuf::pb;
use prost::Message as _;
use serde_json::json;
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

use herald_testkit::*;

/// A raw Protobuf protocol client.
struct Pb {
    stream: WebSocketStream<MaybeTlsStream<TcpStream>>,
    /// Replies and pushes read and not yet asked for.
    inbox: VecDeque<pb::Reply>,
    next_id: u32,
    /// The subprotocol the server chose.
    subprotocol: Option<String>,
}

impl Pb {
    /// Opens `url`, offering the Protobuf subprotocol when `offer`.
    async fn open(url: &str, offer: bool) -> Self {
        let mut request = url.into_client_request().unwrap();
        if offer {
            request.headers_mut().insert(
                "Sec-WebSocket-Protocol",
                "centrifuge-protobuf".parse().unwrap(),
            );
        }
        let (stream, response) =
            tokio::time::timeout(WAIT, tokio_tungstenite::connect_async(request))
                .await
                .expect("upgrade in time")
                .expect("upgrade");
        let subprotocol = response
            .headers()
            .get("Sec-WebSocket-Protocol")
            .map(|v| v.to_str().unwrap().to_string());
        Self {
            stream,
            inbox: VecDeque::new(),
            next_id: 0,
            subprotocol,
        }
    }

    async fn send_raw(&mut self, bytes: Vec<u8>) {
        self.stream.send(Message::binary(bytes)).await.unwrap();
    }

    /// Sends commands in one frame, numbering them; returns their ids.
    async fn send(&mut self, commands: Vec<pb::Command>) -> Vec<u32> {
        let mut frame = Vec::new();
        let mut ids = Vec::new();
        for mut c in commands {
            self.next_id += 1;
            c.id = self.next_id;
            ids.push(c.id);
            frame.extend(c.encode_length_delimited_to_vec());
        }
        self.send_raw(frame).await;
        ids
    }

    async fn cmd(&mut self, command: pb::Command) -> pb::Reply {
        let id = self.send(vec![command]).await[0];
        self.reply(id).await
    }

    /// Reads one binary frame into the inbox; the close code when closed.
    async fn read(&mut self) -> Result<(), Option<u16>> {
        loop {
            let msg = tokio::time::timeout(WAIT, self.stream.next())
                .await
                .expect("message in time");
            match msg {
                Some(Ok(Message::Binary(data))) => {
                    let mut buf = &data[..];
                    while !buf.is_empty() {
                        self.inbox
                            .push_back(pb::Reply::decode_length_delimited(&mut buf).unwrap());
                    }
                    return Ok(());
                }
                Some(Ok(Message::Text(t))) => panic!("a text frame to a Protobuf client: {t}"),
                Some(Ok(Message::Close(frame))) => return Err(frame.map(|f| u16::from(f.code))),
                Some(Ok(_)) => {}
                Some(Err(_)) | None => return Err(None),
            }
        }
    }

    async fn reply(&mut self, id: u32) -> pb::Reply {
        loop {
            if let Some(i) = self.inbox.iter().position(|r| r.id == id) {
                return self.inbox.remove(i).unwrap();
            }
            self.read().await.expect("open while waiting for a reply");
        }
    }

    /// The next push (skipping pings).
    async fn push(&mut self) -> pb::Push {
        loop {
            if let Some(i) = self.inbox.iter().position(|r| r.push.is_some()) {
                return self.inbox.remove(i).unwrap().push.unwrap();
            }
            self.read().await.expect("open while waiting for a push");
        }
    }

    async fn closed(&mut self) -> Option<u16> {
        loop {
            if let Err(code) = self.read().await {
                return code;
            }
        }
    }
}

fn connect(user: &str) -> pb::Command {
    pb::Command {
        connect: Some(pb::ConnectRequest {
            token: token(json!({"sub": user})),
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn subscribe(channel: &str) -> pb::Command {
    pb::Command {
        subscribe: Some(pb::SubscribeRequest {
            channel: channel.into(),
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn publish(channel: &str, data: &'static [u8]) -> pb::Command {
    pb::Command {
        publish: Some(pb::PublishRequest {
            channel: channel.into(),
            data: Bytes::from_static(data),
        }),
        ..Default::default()
    }
}

#[tokio::test]
async fn protobuf_clients_share_channels_with_json_clients() {
    let s = TestServer::start(json!({})).await;
    let mut p = Pb::open(&s.ws_url(), true).await;
    assert_eq!(p.subprotocol.as_deref(), Some("centrifuge-protobuf"));
    // Connect and subscribe in one frame, as the SDKs send them.
    let ids = p.send(vec![connect("alice"), subscribe("hist:pb")]).await;
    let c = p.reply(ids[0]).await.connect.expect("connect result");
    assert!(!c.client.is_empty() && c.ping > 0, "{c:?}");
    let sub = p.reply(ids[1]).await.subscribe.expect("subscribe result");
    assert!(sub.recoverable && !sub.epoch.is_empty(), "{sub:?}");

    let mut j = s.client("bob").await;
    let r = j.cmd(json!({"subscribe": {"channel": "hist:pb"}})).await;
    assert!(r.get("subscribe").is_some(), "{r}");

    // API → both; Protobuf client → both; JSON client → both.
    s.api(
        "publish",
        json!({"channel": "hist:pb", "data": {"from": "api"}}),
    )
    .await;
    let r = p.cmd(publish("hist:pb", b"{\"from\":\"pb\"}")).await;
    assert!(r.publish.is_some(), "{r:?}");
    let r = j
        .cmd(json!({"publish": {"channel": "hist:pb", "data": {"from": "json"}}}))
        .await;
    assert!(r.get("publish").is_some(), "{r}");
    for (n, from) in ["api", "pb", "json"].iter().enumerate() {
        let push = p.push().await;
        assert_eq!(push.channel, "hist:pb");
        let publication = push.r#pub.expect("a publication");
        assert_eq!(publication.offset, n as u64 + 1);
        let data: serde_json::Value = serde_json::from_slice(&publication.data).unwrap();
        assert_eq!(data["from"], *from);
        let pushed = j.push().await;
        assert_eq!(pushed["pub"]["data"]["from"], *from, "{pushed}");
    }
    let from_pb = {
        let r = j
            .cmd(json!({"history": {"channel": "hist:pb", "limit": 10}}))
            .await;
        r["history"]["publications"][1].clone()
    };
    assert_eq!(from_pb["info"]["user"], "alice", "{from_pb}");

    // History, presence stats and a recovering resubscribe over Protobuf.
    let h = p
        .cmd(pb::Command {
            history: Some(pb::HistoryRequest {
                channel: "hist:pb".into(),
                limit: 10,
                ..Default::default()
            }),
            ..Default::default()
        })
        .await;
    let h = h.history.unwrap_or_default();
    assert_eq!((h.publications.len(), h.offset), (3, 3), "{h:?}");
    let r = p
        .cmd(pb::Command {
            unsubscribe: Some(pb::UnsubscribeRequest {
                channel: "hist:pb".into(),
            }),
            ..Default::default()
        })
        .await;
    assert!(r.unsubscribe.is_some(), "{r:?}");
    s.api("publish", json!({"channel": "hist:pb", "data": {"n": 4}}))
        .await;
    let r = p
        .cmd(pb::Command {
            subscribe: Some(pb::SubscribeRequest {
                channel: "hist:pb".into(),
                recover: true,
                offset: 3,
                epoch: sub.epoch.clone(),
                ..Default::default()
            }),
            ..Default::default()
        })
        .await;
    let resub = r.subscribe.expect("subscribe result");
    assert!(resub.recovered, "{resub:?}");
    assert_eq!(resub.publications.len(), 1);
    assert_eq!(&resub.publications[0].data[..], b"{\"n\":4}");
}

#[tokio::test]
async fn the_query_asks_for_protobuf_too() {
    let s = TestServer::start(json!({})).await;
    for query in ["format=protobuf", "cf_protocol=protobuf"] {
        let mut p = Pb::open(&format!("{}?{query}", s.ws_url()), false).await;
        assert_eq!(p.subprotocol, None);
        let c = p.cmd(connect("u")).await;
        assert!(c.connect.is_some(), "{query}: {c:?}");
    }
}

#[tokio::test]
async fn server_pings_and_client_pongs_are_empty_messages() {
    let s = TestServer::start(json!({"client": {"ping_interval": "1s", "pong_timeout": "500ms"}}))
        .await;
    let mut p = Pb::open(&s.ws_url(), true).await;
    let c = p.cmd(connect("u")).await.connect.unwrap();
    assert!(c.pong, "{c:?}");
    for _ in 0..2 {
        // The ping: an empty reply.
        loop {
            if let Some(i) = p.inbox.iter().position(|r| *r == pb::Reply::default()) {
                p.inbox.remove(i);
                break;
            }
            p.read().await.expect("open");
        }
        p.send_raw(pb::Command::default().encode_length_delimited_to_vec())
            .await;
    }
    // Still connected after two rounds.
    let r = p.cmd(subscribe("chat:x")).await;
    assert!(r.subscribe.is_some(), "{r:?}");
}

#[tokio::test]
async fn bad_protobuf_input_gets_an_error_or_a_close() {
    let s = TestServer::start(json!({})).await;
    let mut p = Pb::open(&s.ws_url(), true).await;
    p.cmd(connect("u")).await.connect.unwrap();
    p.cmd(subscribe("chat:x")).await.subscribe.unwrap();
    // A payload that is not JSON: error 107, the connection stays.
    let r = p.cmd(publish("chat:x", b"\xff\x00binary")).await;
    assert_eq!(r.error.map(|e| e.code), Some(107));
    let r = p.cmd(publish("chat:x", b"{\"ok\":true}")).await;
    assert!(r.publish.is_some(), "{r:?}");
    assert_eq!(&p.push().await.r#pub.unwrap().data[..], b"{\"ok\":true}");

    // A length past the frame, then a varint that never ends: 3501.
    for bad in [vec![0xff, 0xff, 0xff, 0x0f, 1], vec![0xff; 11]] {
        let mut p = Pb::open(&s.ws_url(), true).await;
        p.cmd(connect("u")).await.connect.unwrap();
        p.send_raw(bad).await;
        assert_eq!(p.closed().await, Some(3501));
    }
    // JSON sent to a Protobuf connection is not Protobuf either.
    let mut p = Pb::open(&s.ws_url(), true).await;
    p.send_raw(br#"{"id":1,"connect":{}}"#.to_vec()).await;
    assert_eq!(p.closed().await, Some(3501));
    // The server is fine.
    let mut ok = Pb::open(&s.ws_url(), true).await;
    assert!(ok.cmd(connect("u")).await.connect.is_some());
}

/// A payload written across lines, by a Protobuf client or through the
/// server API, reaches JSON subscribers on one line (their frames are split
/// at line breaks).
#[tokio::test]
async fn payloads_across_lines_do_not_break_json_subscribers() {
    let s = TestServer::start(json!({})).await;
    let mut j = s.client("bob").await;
    let r = j.cmd(json!({"subscribe": {"channel": "chat:lines"}})).await;
    assert!(r.get("subscribe").is_some(), "{r}");
    let mut p = Pb::open(&s.ws_url(), true).await;
    p.cmd(connect("alice")).await.connect.unwrap();
    p.cmd(subscribe("chat:lines")).await.subscribe.unwrap();
    let r = p.cmd(publish("chat:lines", b"{\n  \"n\": 1\n}")).await;
    assert!(r.publish.is_some(), "{r:?}");
    let (status, text) = s
        .api_raw(
            "publish",
            "{\"channel\": \"chat:lines\",\n \"data\": {\r\n \"n\": 2\r\n}}",
            Some(API_KEY),
        )
        .await;
    assert_eq!(status, 200, "{text}");
    for n in [1, 2] {
        assert_eq!(j.push().await["pub"]["data"]["n"], n);
    }
}
