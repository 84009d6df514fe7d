use futures_util::StreamExt;
use tokio::io::AsyncWriteExt;

use super::*;

fn streams() -> Streams {
    Streams {
        paths: vec!["/connection/sse".into(), "/connection/http_stream".into()],
        stall: Duration::from_secs(1),
    }
}

fn direct(head: &str) -> (axum::http::request::Parts, u64, usize) {
    match parse(head.as_bytes(), &streams()) {
        Parsed::Direct(head, end) => (head.request, head.length, end),
        other => panic!("{head:?}: {other:?}"),
    }
}

fn other(head: &str) {
    match parse(head.as_bytes(), &streams()) {
        Parsed::Other => {}
        found => panic!("{head:?}: {found:?}"),
    }
}

#[test]
fn streaming_requests_are_taken_with_their_headers_and_length() {
    let head =
        "GET /connection/sse?cf_connect=%7B%7D HTTP/1.1\r\nHost: x\r\nOrigin: http://a\r\n\r\n";
    let (parts, length, end) = direct(head);
    assert_eq!(parts.method, Method::GET);
    assert_eq!(parts.uri.query(), Some("cf_connect=%7B%7D"));
    assert_eq!(parts.version, Version::HTTP_11);
    assert_eq!(parts.headers["origin"], "http://a");
    assert_eq!((length, end), (0, head.len()));

    let head = "POST /connection/http_stream HTTP/1.0\r\nContent-Length: 12\r\n\r\n{\"id\"";
    let (parts, length, end) = direct(head);
    assert_eq!(parts.version, Version::HTTP_10);
    assert_eq!((length, end), (12, head.len() - 5));

    // A preflight too.
    let (parts, _, _) = direct("OPTIONS /connection/sse HTTP/1.1\r\n\r\n");
    assert_eq!(parts.method, Method::OPTIONS);
}

#[test]
fn a_connection_is_kept_alive_as_the_client_says() {
    let keeps = |head: &str| match parse(head.as_bytes(), &streams()) {
        Parsed::Direct(head, _) => head.keep_alive,
        other => panic!("{head:?}: {other:?}"),
    };
    assert!(keeps("POST /connection/sse HTTP/1.1\r\n\r\n"));
    assert!(!keeps(
        "POST /connection/sse HTTP/1.1\r\nConnection: Close\r\n\r\n"
    ));
    assert!(!keeps(
        "POST /connection/sse HTTP/1.1\r\nConnection: te, close\r\n\r\n"
    ));
    assert!(!keeps("POST /connection/sse HTTP/1.0\r\n\r\n"));
}

#[test]
fn a_head_not_yet_whole_waits_for_more() {
    for head in ["GE", "GET /connection/sse HTTP/1.1\r\nHost: x\r\n"] {
        assert!(matches!(
            parse(head.as_bytes(), &streams()),
            Parsed::Partial
        ));
    }
}

#[test]
fn everything_else_is_left_to_the_http_stack() {
    // Other paths, methods and protocols.
    other("GET /connection/websocket HTTP/1.1\r\n\r\n");
    other("GET /connection/sse/more HTTP/1.1\r\n\r\n");
    other("HEAD /connection/sse HTTP/1.1\r\n\r\n");
    other("GET http://x/connection/sse HTTP/1.1\r\n\r\n");
    other("PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n");
    other("garbage\r\n\r\n");
    other("GET /connection/sse HTTP/1.1\r\nConnection: upgrade\r\nUpgrade: websocket\r\n\r\n");
    // Bodies this side does not read.
    other("POST /connection/sse HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n");
    other("POST /connection/sse HTTP/1.1\r\nExpect: 100-continue\r\nContent-Length: 3\r\n\r\n");
    other("POST /connection/sse HTTP/1.1\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\n");
    other("POST /connection/sse HTTP/1.1\r\nContent-Length: -3\r\n\r\n");
    other("POST /connection/sse HTTP/1.1\r\nContent-Length: +3\r\n\r\n");
    other("POST /connection/sse HTTP/1.1\r\nContent-Length: 99999999999999999999999\r\n\r\n");
    // More fields than taken here.
    let many: String = (0..HEADERS_MAX + 1)
        .map(|i| format!("X-{i}: y\r\n"))
        .collect();
    other(&format!("GET /connection/sse HTTP/1.1\r\n{many}\r\n"));
}

#[tokio::test]
async fn sniffing_stops_at_the_head_and_keeps_what_follows() {
    let (mut client, mut server) = tokio::io::duplex(1024);
    client
        .write_all(b" /connection/sse HTTP/1.1\r\nContent-Length: 5\r\n\r\nab")
        .await
        .unwrap();
    // Carried over from an earlier request: the head is found in it.
    let carried = Bytes::from_static(b"GET /connection/sse HTTP/1.1\r\n\r\nPOST");
    let Sniffed::Direct(first) = sniff(&mut server, &streams(), carried).await.unwrap() else {
        panic!("not taken");
    };
    assert_eq!(&first.rest[..], b"POST");
    let Sniffed::Direct(head) = sniff(&mut server, &streams(), first.rest).await.unwrap() else {
        panic!("not taken");
    };
    assert_eq!(head.length, 5);
    assert_eq!(&head.rest[..], b"ab");

    // The body: what came with the head, then the rest from the
    // connection, and no further; then the connection comes back.
    let (back, returned) = oneshot::channel();
    let mut body = Incoming {
        io: Some(server),
        rest: head.rest,
        remaining: head.length,
        back: Some(back),
    };
    client.write_all(b"cdefgh").await.unwrap();
    let mut read = Vec::new();
    while let Some(chunk) = body.next().await {
        read.extend_from_slice(&chunk.unwrap());
    }
    assert_eq!(read, b"abcde");
    drop(body);
    let Returned {
        io: mut server,
        rest,
        whole,
    } = returned.await.expect("the connection back");
    assert!(whole && rest.is_empty());
    let mut after = [0u8; 3];
    server.read_exact(&mut after).await.unwrap();
    assert_eq!(&after, b"fgh");
}

#[tokio::test]
async fn a_body_cut_short_is_an_error_and_other_requests_pass_with_their_bytes() {
    let (client, server) = tokio::io::duplex(1024);
    let (back, _returned) = oneshot::channel();
    let mut body = Incoming {
        io: Some(server),
        rest: Bytes::new(),
        remaining: 10,
        back: Some(back),
    };
    drop(client);
    let cut = body.next().await.expect("an item");
    assert_eq!(cut.unwrap_err().kind(), io::ErrorKind::UnexpectedEof);

    let (mut client, mut server) = tokio::io::duplex(1024);
    client
        .write_all(b"GET /api HTTP/1.1\r\n\r\n")
        .await
        .unwrap();
    let Sniffed::Other(read) = sniff(&mut server, &streams(), Bytes::new()).await.unwrap() else {
        panic!("taken");
    };
    assert_eq!(&read[..], b"GET /api HTTP/1.1\r\n\r\n");
    // With no streaming transport enabled nothing is read.
    let none = Streams::default();
    let Sniffed::Other(read) = sniff(&mut server, &none, Bytes::new()).await.unwrap() else {
        panic!("taken");
    };
    assert!(read.is_empty());
}
