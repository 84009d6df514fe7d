//! The streaming transports' connections as HTTP sees them: a request to
//! one gets a response that goes on, chunk by chunk, for as long as the
//! connection, which closes with it. However the request comes — in one
//! piece or several, on a fresh connection or after other requests on a
//! kept-alive one, pipelined, with a chunked body, with a very large head —
//! it is served the same.

use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use herald_testkit::*;

fn config() -> Value {
    json!({"uni_http_stream": {"enabled": true}, "uni_sse": {"enabled": true},
           "http_stream": {"enabled": true}})
}

fn connect_request(user: &str) -> String {
    json!({"token": token(json!({"sub": user}))}).to_string()
}

/// Reads from `tcp` until what was read holds `needle`; all of it.
async fn read_until(tcp: &mut TcpStream, read: &mut String, needle: &str) {
    read_until_n(tcp, read, needle, 1).await;
}

/// Reads from `tcp` until what was read holds `needle` `n` times.
async fn read_until_n(tcp: &mut TcpStream, read: &mut String, needle: &str, n: usize) {
    let mut buf = [0u8; 4096];
    while read.matches(needle).count() < n {
        let n = tokio::time::timeout(WAIT, tcp.read(&mut buf))
            .await
            .unwrap_or_else(|_| panic!("{needle:?} in time; read {read:?}"))
            .unwrap();
        assert!(n > 0, "closed before {needle:?}; read {read:?}");
        read.push_str(&String::from_utf8_lossy(&buf[..n]));
    }
}

/// A POST of `body` to `path` with `fields`, in one write.
fn post(path: &str, fields: &str, body: &str) -> String {
    format!(
        "POST {path} HTTP/1.1\r\nHost: x\r\n{fields}Content-Length: {}\r\n\r\n{body}",
        body.len()
    )
}

#[tokio::test]
async fn a_stream_is_chunked_and_ends_when_the_client_goes() {
    let s = TestServer::start(config()).await;
    let mut tcp = TcpStream::connect(s.addr).await.unwrap();
    // The head and the body's start, then the rest of the body later.
    let body = connect_request("ann");
    let (start, end) = body.split_at(10);
    let request = post("/connection/uni_sse", "", start);
    let request = request.replace(
        &format!("Content-Length: {}", start.len()),
        &format!("Content-Length: {}", body.len()),
    );
    tcp.set_nodelay(true).unwrap();
    tcp.write_all(request.as_bytes()).await.unwrap();
    tcp.write_all(end.as_bytes()).await.unwrap();
    let mut read = String::new();
    read_until(&mut tcp, &mut read, "\"connect\"").await;
    let head = read.split("\r\n\r\n").next().unwrap().to_ascii_lowercase();
    assert!(head.starts_with("http/1.1 200 ok\r\n"), "{head}");
    for field in [
        "content-type: text/event-stream",
        "transfer-encoding: chunked",
        "cache-control: no-cache",
        "connection: close",
    ] {
        assert!(head.contains(field), "{field} in {head}");
    }
    wait_until("connected", || s.node.hub.num_clients() == 1).await;
    drop(tcp);
    wait_until("gone with its client", || s.node.hub.num_clients() == 0).await;
    s.stop().await;
}

#[tokio::test]
async fn requests_off_the_common_path_are_served_the_same() {
    let s = TestServer::start(config()).await;
    let body = connect_request("bob");

    // After a preflight on the same connection.
    let mut tcp = TcpStream::connect(s.addr).await.unwrap();
    let preflight = "OPTIONS /connection/uni_http_stream HTTP/1.1\r\nHost: x\r\n\
                     Origin: http://elsewhere\r\nAccess-Control-Request-Method: POST\r\n\r\n";
    tcp.write_all(preflight.as_bytes()).await.unwrap();
    let mut read = String::new();
    read_until(&mut tcp, &mut read, "\r\n\r\n").await;
    assert!(read.starts_with("HTTP/1.1 204"), "{read}");
    let request = post("/connection/uni_http_stream", "", &body);
    tcp.write_all(request.as_bytes()).await.unwrap();
    read_until(&mut tcp, &mut read, "\"connect\"").await;

    // A chunked body.
    let mut chunked = TcpStream::connect(s.addr).await.unwrap();
    let request = format!(
        "POST /connection/uni_http_stream HTTP/1.1\r\nHost: x\r\n\
         Transfer-Encoding: chunked\r\n\r\n{:x}\r\n{body}\r\n0\r\n\r\n",
        body.len()
    );
    chunked.write_all(request.as_bytes()).await.unwrap();
    let mut read = String::new();
    read_until(&mut chunked, &mut read, "\"connect\"").await;

    // A head larger than a look at it takes.
    let mut large = TcpStream::connect(s.addr).await.unwrap();
    let pad = format!("X-Pad: {}\r\n", "p".repeat(40_000));
    let request = post("/connection/uni_sse", &pad, &body);
    large.write_all(request.as_bytes()).await.unwrap();
    let mut read = String::new();
    read_until(&mut large, &mut read, "\"connect\"").await;

    wait_until("three streams", || s.node.hub.num_clients() == 3).await;
    // An over-long body is refused by the handler's limit, as before.
    let mut over = TcpStream::connect(s.addr).await.unwrap();
    let huge = "x".repeat(70_000);
    let request = post("/connection/uni_sse", "", &huge);
    over.write_all(request.as_bytes()).await.unwrap();
    let mut read = String::new();
    read_until(&mut over, &mut read, "\r\n\r\n").await;
    assert!(read.starts_with("HTTP/1.1 413"), "{read}");
    s.stop().await;
}

/// The node's shutdown ends a stream with its last push, and the response
/// with its last chunk.
#[tokio::test]
async fn a_shutdown_ends_the_response_whole() {
    let s = TestServer::start(config()).await;
    let mut tcp = TcpStream::connect(s.addr).await.unwrap();
    let request = post("/connection/uni_http_stream", "", &connect_request("cy"));
    tcp.write_all(request.as_bytes()).await.unwrap();
    let mut read = String::new();
    read_until(&mut tcp, &mut read, "\"connect\"").await;
    s.node.shutdown().cancel();
    read_until(&mut tcp, &mut read, "\r\n0\r\n\r\n").await;
    assert!(read.contains("\"disconnect\""), "{read}");
    let mut rest = Vec::new();
    let n = tokio::time::timeout(WAIT, tcp.read_to_end(&mut rest))
        .await
        .expect("closed in time")
        .unwrap();
    assert_eq!(n, 0, "nothing after the last chunk");
}

/// SDKs send emulation requests and their next stream over the same pooled
/// connections: each answer keeps the connection for the next request,
/// pipelined ones included, until one that ends it.
#[tokio::test]
async fn a_kept_alive_connection_carries_requests_until_a_stream() {
    let s = TestServer::start(config()).await;
    let mut tcp = TcpStream::connect(s.addr).await.unwrap();
    let unknown = json!({"session": "nobody", "node": "no-such-node", "data": "{}"}).to_string();
    let emulation = post("/emulation", "", &unknown);
    // Two in one write, then one more.
    tcp.write_all(format!("{emulation}{emulation}").as_bytes())
        .await
        .unwrap();
    let mut read = String::new();
    read_until_n(&mut tcp, &mut read, "HTTP/1.1 404", 2).await;
    assert!(!read.contains("connection: close"), "{read}");
    let mut read = String::new();
    tcp.write_all(emulation.as_bytes()).await.unwrap();
    read_until(&mut tcp, &mut read, "HTTP/1.1 404").await;

    // Then a stream on the same connection.
    let connect = json!({"id": 1, "connect": {"token": token(json!({"sub": "dee"}))}});
    let stream = post("/connection/http_stream", "", &connect.to_string());
    tcp.write_all(stream.as_bytes()).await.unwrap();
    read_until(&mut tcp, &mut read, "\"connect\"").await;
    wait_until("connected", || s.node.hub.num_clients() == 1).await;

    // A client that says so has its connection closed after the answer.
    let mut closing = TcpStream::connect(s.addr).await.unwrap();
    let request = post("/emulation", "Connection: close\r\n", &unknown);
    closing.write_all(request.as_bytes()).await.unwrap();
    let mut rest = Vec::new();
    tokio::time::timeout(WAIT, closing.read_to_end(&mut rest))
        .await
        .expect("closed in time")
        .unwrap();
    let answer = String::from_utf8_lossy(&rest);
    assert!(answer.starts_with("HTTP/1.1 404"), "{answer}");
    assert!(answer.contains("connection: close"), "{answer}");
    s.stop().await;
}
