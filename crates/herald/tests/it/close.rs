//! How WebSocket connections end (RFC 6455 §5.5.1, §7.4): the server
//! answers a client's Close, closes a connection it cannot go on with
//! using the code that says why, and lets the client read that Close
//! frame before the TCP connection ends cleanly (never a reset).

use serde_json::json;

use herald_testkit::*;

#[tokio::test]
async fn a_client_close_is_answered_and_tcp_ends_cleanly() {
    let s = TestServer::start(json!({})).await;
    let mut ws = RawWs::open(&s.addr.to_string()).await;
    ws.send_close(1000).await;
    let ((code, _), end) = ws.close_and_end().await;
    assert_eq!((code, end), (1000, RawEvent::Eof));
    // Also after a connect.
    let mut ws = RawWs::open(&s.addr.to_string()).await;
    let connect = json!({"id": 1, "connect": {"token": token(json!({"sub": "u"}))}});
    ws.send_frame(true, opcode::TEXT, connect.to_string().as_bytes())
        .await;
    assert!(matches!(ws.next().await, RawEvent::Frame(opcode::TEXT, _)));
    ws.send_close(1001).await;
    let ((code, _), end) = ws.close_and_end().await;
    assert_eq!((code, end), (1001, RawEvent::Eof));
    s.stop().await;
}

#[tokio::test]
async fn broken_frames_close_with_the_code_that_says_why() {
    let s = TestServer::start(json!({})).await;
    let addr = s.addr.to_string();
    // Text that is not UTF-8: 1007.
    let mut ws = RawWs::open(&addr).await;
    ws.send_frame(true, opcode::TEXT, &[b'{', 0xff, 0xfe, b'}'])
        .await;
    let ((code, _), end) = ws.close_and_end().await;
    assert_eq!((code, end), (1007, RawEvent::Eof));
    // A reserved opcode: 1002.
    let mut ws = RawWs::open(&addr).await;
    ws.send_frame(true, 3, b"x").await;
    let ((code, _), end) = ws.close_and_end().await;
    assert_eq!((code, end), (1002, RawEvent::Eof));
    // A fragmented control frame: 1002.
    let mut ws = RawWs::open(&addr).await;
    ws.send_frame(false, 9, b"ping").await;
    let ((code, _), end) = ws.close_and_end().await;
    assert_eq!((code, end), (1002, RawEvent::Eof));
    s.stop().await;
}

/// A message far over `websocket.message_size_limit`: the server stops
/// reading it, closes with 1009, and still reads (and drops) the rest for
/// a while, so the client gets the Close frame instead of a reset.
#[tokio::test]
async fn a_huge_message_gets_1009_not_a_reset() {
    let s = TestServer::start(json!({})).await;
    let mut ws = RawWs::open(&s.addr.to_string()).await;
    let huge = frame(true, opcode::TEXT, &vec![b' '; 4 << 20]);
    assert!(
        ws.send_bytes(&huge).await,
        "the server read the whole message"
    );
    let ((code, reason), end) = ws.close_and_end().await;
    assert_eq!((code, reason.as_str()), (1009, "message too big"));
    assert_eq!(end, RawEvent::Eof);
    s.stop().await;
}
