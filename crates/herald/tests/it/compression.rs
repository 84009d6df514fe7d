//! WebSocket permessage-deflate (`websocket.compression`): agreed only
//! when the server enables it and the client offers it, messages both ways
//! compressed, small ones left plain under `compression_min_size`, and a
//! compressed message counted against the size limit after inflating.

use std::io::Write;

use serde_json::{json, Value};

use herald_testkit::*;

const ANSWER: &str = "permessage-deflate; server_no_context_takeover; client_no_context_takeover";
const OFFER: &str = "Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits\r\n";

fn compressing(min_size: usize) -> Value {
    json!({"websocket": {"compression": true, "compression_min_size": min_size}})
}

/// The extension answer in a raw response head, if any.
fn answered(head: &str) -> Option<String> {
    head.lines()
        .find_map(|l| l.strip_prefix("sec-websocket-extensions: "))
        .map(str::to_string)
}

#[tokio::test]
async fn compression_is_agreed_only_when_enabled_and_offered() {
    let off = TestServer::start(json!({})).await;
    let ws = Ws::open_compressed(&off.ws_url()).await;
    assert_eq!(ws.extensions, None, "off by default");
    off.stop().await;

    let on = TestServer::start(compressing(0)).await;
    let ws = Ws::open_compressed(&on.ws_url()).await;
    assert_eq!(ws.extensions.as_deref(), Some(ANSWER));
    let ws = Ws::open(&on.ws_url()).await;
    assert_eq!(ws.extensions, None, "not offered");
    let addr = on.addr.to_string();
    // An offer the server cannot honour is declined, the next one taken.
    let bad = "Sec-WebSocket-Extensions: permessage-deflate; server_max_window_bits=7\r\n";
    let (_, head) = RawWs::open_with(&addr, bad).await;
    assert_eq!(answered(&head), None, "{head}");
    let two = "Sec-WebSocket-Extensions: permessage-deflate; server_max_window_bits=7, \
               permessage-deflate; server_max_window_bits=10\r\n";
    let (_, head) = RawWs::open_with(&addr, two).await;
    assert_eq!(
        answered(&head).as_deref(),
        Some(format!("{ANSWER}; server_max_window_bits=10").as_str())
    );
    on.stop().await;
}

#[tokio::test]
async fn a_compressing_client_sends_and_receives() {
    let s = TestServer::start(compressing(0)).await;
    let mut ws = Ws::open_compressed(&s.ws_url()).await;
    assert!(ws.extensions.is_some());
    let reply = ws
        .cmd(json!({"connect": {"token": token(json!({"sub": "u1"}))}}))
        .await;
    assert!(reply.get("connect").is_some(), "{reply}");
    let reply = ws.cmd(json!({"subscribe": {"channel": "chat:z"}})).await;
    assert!(reply.get("subscribe").is_some(), "{reply}");
    let text = "the quick brown fox ".repeat(500);
    let r = s
        .api(
            "publish",
            json!({"channel": "chat:z", "data": {"text": text}}),
        )
        .await;
    assert!(r.get("error").is_none(), "{r}");
    assert_eq!(ws.push().await["pub"]["data"]["text"], text.as_str());
    // The client's own large publication, compressed on its way in.
    let reply = ws
        .cmd(json!({"publish": {"channel": "chat:z", "data": {"mine": text}}}))
        .await;
    assert!(reply.get("publish").is_some(), "{reply}");
    assert_eq!(ws.push().await["pub"]["data"]["mine"], text.as_str());
    s.stop().await;
}

/// Inflates one message of a compressed frame.
fn inflate(payload: &[u8]) -> String {
    let mut out = Vec::new();
    let mut d = flate2::write::DeflateDecoder::new(&mut out);
    d.write_all(payload).unwrap();
    d.write_all(&[0, 0, 0xff, 0xff]).unwrap();
    d.flush().unwrap();
    drop(d);
    String::from_utf8(out).unwrap()
}

#[tokio::test]
async fn small_messages_stay_plain_under_compression_min_size() {
    let s = TestServer::start(compressing(500)).await;
    let (mut ws, head) = RawWs::open_with(&s.addr.to_string(), OFFER).await;
    assert_eq!(answered(&head).as_deref(), Some(ANSWER), "{head}");
    let connect = json!({"id": 1, "connect": {"token": token(json!({"sub": "u"}))}});
    let subscribe = json!({"id": 2, "subscribe": {"channel": "chat:m"}});
    for (command, reply) in [(connect, "\"connect\""), (subscribe, "\"subscribe\"")] {
        ws.send_frame(true, opcode::TEXT, command.to_string().as_bytes())
            .await;
        match ws.next().await {
            RawEvent::Frame(opcode::TEXT, payload) => {
                assert!(String::from_utf8_lossy(&payload).contains(reply));
            }
            other => panic!("a short reply goes plain: {other:?}"),
        }
    }
    let text = "abcdefgh".repeat(200);
    let r = s
        .api(
            "publish",
            json!({"channel": "chat:m", "data": {"text": text}}),
        )
        .await;
    assert!(r.get("error").is_none(), "{r}");
    match ws.next().await {
        RawEvent::Frame(op, payload) if op == opcode::TEXT | opcode::RSV1 => {
            assert!(payload.len() < text.len() / 4, "{}", payload.len());
            let push: Value = serde_json::from_str(&inflate(&payload)).unwrap();
            assert_eq!(push["push"]["pub"]["data"]["text"], text.as_str());
        }
        other => panic!("a long push goes compressed: {other:?}"),
    }
    s.stop().await;
}

/// A client frame with the compressed bit set.
fn compressed_frame(opcode: u8, data: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::DeflateEncoder::new(Vec::new(), flate2::Compression::best());
    e.write_all(data).unwrap();
    frame(true, opcode | opcode::RSV1, &e.finish().unwrap())
}

#[tokio::test]
async fn a_compressed_message_over_the_limit_closes_with_1009() {
    let s = TestServer::start(compressing(0)).await;
    let addr = s.addr.to_string();
    // A bomb: 64 MiB of zeros in some 64 KiB.
    let (mut ws, _) = RawWs::open_with(&addr, OFFER).await;
    let bomb = compressed_frame(opcode::BINARY, &vec![0; 64 << 20]);
    assert!(bomb.len() < 128 * 1024, "{}", bomb.len());
    ws.send_bytes(&bomb).await;
    let ((code, reason), end) = ws.close_and_end().await;
    assert_eq!((code, reason.as_str()), (1009, "message too big"));
    assert_eq!(end, RawEvent::Eof);
    // A connect command compressed, under the limit: read as usual (the
    // short reply goes compressed or not, whichever is shorter).
    let (mut ws, _) = RawWs::open_with(&addr, OFFER).await;
    let connect = json!({"id": 1, "connect": {"token": token(json!({"sub": "u"}))}});
    ws.send_bytes(&compressed_frame(
        opcode::TEXT,
        connect.to_string().as_bytes(),
    ))
    .await;
    let reply = match ws.next().await {
        RawEvent::Frame(op, payload) if op == opcode::TEXT | opcode::RSV1 => inflate(&payload),
        RawEvent::Frame(opcode::TEXT, payload) => String::from_utf8(payload).unwrap(),
        other => panic!("expected the connect reply: {other:?}"),
    };
    assert!(reply.contains("\"connect\""), "{reply}");
    // Data that is not DEFLATE: 1007.
    let (mut ws, _) = RawWs::open_with(&addr, OFFER).await;
    ws.send_bytes(&frame(true, opcode::TEXT | opcode::RSV1, &[0xff; 32]))
        .await;
    let ((code, _), _) = ws.close_and_end().await;
    assert_eq!(code, 1007);
    s.stop().await;
}

#[tokio::test]
async fn a_compression_level_out_of_range_is_refused() {
    for (key, level) in [("websocket", 10), ("uni_websocket", -2)] {
        let err = config_refusal(&json!({ key: {"compression_level": level} }));
        assert!(err.contains(&format!("{key}.compression_level")), "{err}");
    }
}
