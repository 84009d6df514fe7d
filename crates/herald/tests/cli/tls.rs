//! TLS on the listener (`http_server.tls`): the API and WebSocket over
//! TLS with a certificate made here, and a new certificate taken on SIGHUP
//! while connections made with the old one stay up.

use std::path::Path;
use std::sync::Arc;

use futures_util::{SinkExt, StreamExt};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use rustls::{ClientConfig, RootCertStore};
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tokio_rustls::TlsConnector;
use tokio_tungstenite::tungstenite::Message;

use super::*;

/// A certificate for `localhost` and its key, in PEM.
fn certificate() -> (String, String) {
    let made = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
    (made.cert.pem(), made.signing_key.serialize_pem())
}

fn write_identity(dir: &Path, (cert, key): &(String, String)) {
    std::fs::write(dir.join("cert.pem"), cert).unwrap();
    std::fs::write(dir.join("key.pem"), key).unwrap();
}

/// A TLS connection to `addr` trusting only `cert`.
async fn connect(addr: &str, cert: &str) -> std::io::Result<TlsStream<TcpStream>> {
    let mut roots = RootCertStore::empty();
    roots
        .add(CertificateDer::from_pem_slice(cert.as_bytes()).unwrap())
        .unwrap();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let tcp = TcpStream::connect(addr).await?;
    let name = ServerName::try_from("localhost").unwrap();
    TlsConnector::from(Arc::new(config))
        .connect(name, tcp)
        .await
}

async fn health(addr: &str, cert: &str) -> std::io::Result<String> {
    let mut tls = connect(addr, cert).await?;
    tls.write_all(b"GET /health HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        .await?;
    let mut reply = String::new();
    tls.read_to_string(&mut reply).await?;
    Ok(reply)
}

/// Waits for a log line containing `text`.
fn logged(s: &Served, text: &str) -> String {
    loop {
        let line = s.lines.recv_timeout(WAIT).expect("a log line in time");
        if line.contains(text) {
            return line;
        }
    }
}

#[tokio::test]
async fn tls_listener_serves_and_reloads_on_sighup() {
    let dir = tempfile::tempdir().unwrap();
    let first = certificate();
    write_identity(dir.path(), &first);
    let config = dir.path().join("config.json");
    let cert_path = dir.path().join("cert.pem");
    let key_path = dir.path().join("key.pem");
    write(
        &config,
        &json!({"client": {"insecure": true}, "uni_sse": {"enabled": true},
                "http_server": {"tls": {"enabled": true, "cert_pem": cert_path, "key_pem": key_path}}}),
    );
    let s = serve_full(&config, &[], &[]);
    assert!(s.head.last().unwrap().contains("tls=true"), "{:?}", s.head);

    // The API and a WebSocket over TLS.
    let reply = health(&s.addr, &first.0).await.unwrap();
    assert!(reply.starts_with("HTTP/1.1 200"), "{reply}");
    let tls = connect(&s.addr, &first.0).await.unwrap();
    let url = format!(
        "wss://localhost:{}/connection/websocket",
        s.addr.split(':').nth(1).unwrap()
    );
    let (mut ws, _) = tokio_tungstenite::client_async(url, tls).await.unwrap();
    ws.send(Message::text(json!({"id": 1, "connect": {}}).to_string()))
        .await
        .unwrap();
    let reply = ws.next().await.unwrap().unwrap();
    assert!(
        reply.to_text().unwrap().contains("\"connect\""),
        "{reply:?}"
    );

    // A stream over TLS (served beside the HTTP stack, chunk by chunk).
    let mut stream = connect(&s.addr, &first.0).await.unwrap();
    let request = "POST /connection/uni_sse HTTP/1.1\r\nHost: localhost\r\n\
                   Content-Length: 2\r\n\r\n{}";
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut read = String::new();
    let mut buf = [0u8; 1024];
    while !read.contains("\"connect\"") {
        let n = tokio::time::timeout(WAIT, stream.read(&mut buf))
            .await
            .expect("the connect push in time")
            .unwrap();
        assert!(n > 0, "closed: {read}");
        read.push_str(&String::from_utf8_lossy(&buf[..n]));
    }
    assert!(read.contains("transfer-encoding: chunked"), "{read}");

    // A new certificate, taken on SIGHUP: new connections get it, the one
    // made before stays up.
    let second = certificate();
    write_identity(dir.path(), &second);
    s.signal("HUP");
    logged(&s, "TLS certificate and key reloaded");
    assert!(
        health(&s.addr, &first.0).await.is_err(),
        "the old certificate is gone"
    );
    let reply = health(&s.addr, &second.0).await.unwrap();
    assert!(reply.starts_with("HTTP/1.1 200"), "{reply}");
    ws.send(Message::text(json!({"id": 2, "ping": {}}).to_string()))
        .await
        .unwrap();
    let reply = ws.next().await.unwrap().unwrap();
    assert!(reply.to_text().unwrap().contains("\"id\":2"), "{reply:?}");

    // A reload that fails keeps the certificate in use.
    std::fs::write(&key_path, "not a key").unwrap();
    s.signal("HUP");
    logged(&s, "TLS not reloaded");
    let reply = health(&s.addr, &second.0).await.unwrap();
    assert!(reply.starts_with("HTTP/1.1 200"), "{reply}");
}

/// A plaintext client of a TLS listener gets nowhere; a missing key file
/// stops the start naming the key.
#[tokio::test]
async fn tls_refuses_plaintext_and_a_missing_key() {
    let dir = tempfile::tempdir().unwrap();
    let identity = certificate();
    write_identity(dir.path(), &identity);
    let config = dir.path().join("config.json");
    let tls = |key: &Path| {
        json!({"http_server": {"tls": {"enabled": true,
            "cert_pem": dir.path().join("cert.pem"), "key_pem": key}}})
    };
    write(&config, &tls(&dir.path().join("key.pem")));
    let s = serve_full(&config, &[], &[]);
    let mut plain = TcpStream::connect(&s.addr).await.unwrap();
    plain
        .write_all(b"GET /health HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .await
        .unwrap();
    let mut reply = Vec::new();
    let _ = tokio::time::timeout(WAIT, plain.read_to_end(&mut reply)).await;
    assert!(!String::from_utf8_lossy(&reply).contains("200 OK"));
    drop(s);

    write(&config, &tls(&dir.path().join("missing.pem")));
    let o = run(herald().args(["checkconfig", "-c"]).arg(&config));
    assert!(!o.status.success());
    assert!(
        stderr(&o).contains("http_server.tls.key_pem"),
        "{}",
        stderr(&o)
    );
}

/// `checktoken` verifies a token with a key fetched from an https JWKS
/// endpoint (served here over TLS; the certificate trusted through
/// `SSL_CERT_FILE`, as the system's roots are read).
#[tokio::test]
async fn checktoken_fetches_jwks_over_https() {
    use jsonwebtoken::jwk::Jwk;
    use jsonwebtoken::{Algorithm, EncodingKey, Header};

    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = certificate();
    std::fs::write(dir.path().join("ca.pem"), &cert).unwrap();
    let fixtures = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures");
    let signing =
        EncodingKey::from_rsa_pem(&std::fs::read(format!("{fixtures}/rsa_private.pem")).unwrap())
            .unwrap();
    let mut jwk = Jwk::from_encoding_key(&signing, Algorithm::RS256).unwrap();
    jwk.common.key_id = Some("k1".into());
    let body = json!({"keys": [jwk]}).to_string();

    // A one-route HTTPS server answering every request with the key set.
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let server_config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(
            vec![CertificateDer::from_pem_slice(cert.as_bytes()).unwrap()],
            rustls::pki_types::PrivateKeyDer::from_pem_slice(key.as_bytes()).unwrap(),
        )
        .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(server_config));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let (acceptor, body) = (acceptor.clone(), body.clone());
            tokio::spawn(async move {
                let Ok(mut tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let mut request = [0u8; 4096];
                let _ = tls.read(&mut request).await;
                let reply = format!(
                    "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = tls.write_all(reply.as_bytes()).await;
                let _ = tls.shutdown().await;
            });
        }
    });

    let config = dir.path().join("config.json");
    write(
        &config,
        &json!({"client": {"token": {"jwks_public_endpoint": format!("https://localhost:{port}/jwks")}}}),
    );
    let mut header = Header::new(Algorithm::RS256);
    header.kid = Some("k1".into());
    let token = jsonwebtoken::encode(&header, &json!({"sub": "over-https"}), &signing).unwrap();
    let check = |token: String| {
        let config = config.clone();
        let ca = dir.path().join("ca.pem");
        tokio::task::spawn_blocking(move || {
            run(herald()
                .args(["checktoken", "-c"])
                .arg(&config)
                .arg(token)
                .env("SSL_CERT_FILE", ca))
        })
    };
    let o = check(token).await.unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stdout(&o).contains("over-https"), "{}", stdout(&o));
}
