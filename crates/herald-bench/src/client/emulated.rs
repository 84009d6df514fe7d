//! A client connection over an emulated transport (`--transport
//! http_stream` or `sse`): the connect command opens an HTTP response that
//! streams the server's messages — JSON lines for `http_stream`, `data:`
//! events for `sse` — and every later command is posted to the emulation
//! endpoint with the session and node the connect reply named, as
//! centrifuge-js does when it falls back from WebSocket.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::OnceLock;

use bytes::{Bytes, BytesMut};
use parking_lot::Mutex;

use super::ClientError;
use crate::target::{Target, Transport};

/// One streamed connection.
pub struct Emulated {
    response: reqwest::Response,
    http: reqwest::Client,
    emulation_url: String,
    sse: bool,
    /// Bytes read that do not yet end a message.
    pending: BytesMut,
    /// From the connect reply: where the emulation endpoint finds this
    /// connection.
    pub session: String,
    pub node: String,
}

impl Emulated {
    /// Posts the `connect` command (one JSON line) to the transport's
    /// endpoint and keeps the streaming response.
    pub async fn open(
        target: &Target,
        source: Option<IpAddr>,
        connect: Vec<u8>,
    ) -> Result<Self, ClientError> {
        let http = http_client(source)?;
        let sse = target.transport == Transport::Sse;
        let response = http
            .post(target.http_url_at_addr(target.transport.path()))
            .header("content-type", "application/json")
            .body(connect)
            .send()
            .await
            .map_err(|e| ClientError::Open(e.to_string()))?;
        if !response.status().is_success() {
            return Err(ClientError::Open(refusal(response).await));
        }
        Ok(Self {
            response,
            http,
            emulation_url: target.http_url_at_addr("/emulation"),
            sse,
            pending: BytesMut::new(),
            session: String::new(),
            node: String::new(),
        })
    }

    /// Posts commands (JSON text) for this connection.
    pub async fn send(&self, text: &str) -> Result<(), ClientError> {
        let body = serde_json::json!({"session": self.session, "node": self.node, "data": text});
        let response = self
            .http
            .post(&self.emulation_url)
            .header("content-type", "application/json")
            .body(body.to_string())
            .send()
            .await
            .map_err(|e| ClientError::Lost(e.to_string()))?;
        if !response.status().is_success() {
            let why = refusal(response).await;
            return Err(ClientError::Lost(format!("emulation request: {why}")));
        }
        Ok(())
    }

    /// The next complete messages, one per line.
    pub async fn next_frame(&mut self) -> Result<Bytes, ClientError> {
        loop {
            if let Some(frame) = self.take_complete() {
                return Ok(frame);
            }
            match self.response.chunk().await {
                // Line ends may be CRLF in event streams: read as LF.
                Ok(Some(chunk)) if self.sse && chunk.contains(&b'\r') => {
                    self.pending.extend(chunk.iter().filter(|b| **b != b'\r'))
                }
                Ok(Some(chunk)) => self.pending.extend_from_slice(&chunk),
                Ok(None) => return Err(ClientError::Lost("end of stream".into())),
                Err(e) => return Err(ClientError::Lost(e.to_string())),
            }
        }
    }

    /// The complete messages read so far, if any: lines for `http_stream`;
    /// the `data:` lines of complete events for `sse`.
    fn take_complete(&mut self) -> Option<Bytes> {
        let end_mark: &[u8] = if self.sse { b"\n\n" } else { b"\n" };
        let end = self
            .pending
            .windows(end_mark.len())
            .rposition(|w| w == end_mark)?
            + end_mark.len();
        let complete = self.pending.split_to(end).freeze();
        if !self.sse {
            return Some(complete);
        }
        let mut lines = Vec::with_capacity(complete.len());
        for line in complete.split(|b| *b == b'\n') {
            if let Some(data) = line.strip_prefix(b"data:") {
                lines.extend_from_slice(data.strip_prefix(b" ").unwrap_or(data));
                lines.push(b'\n');
            }
        }
        Some(Bytes::from(lines))
    }
}

/// An error response as a message: its status and the start of its body
/// (the server says why there).
async fn refusal(response: reqwest::Response) -> String {
    let status = response.status();
    let body = response.text().await.unwrap_or_default();
    format!(
        "HTTP {status}: {}",
        body.chars().take(200).collect::<String>()
    )
}

/// One HTTP client per source address, shared by the connections from it
/// (each stream holds a connection of its own; emulation requests reuse
/// idle ones).
fn http_client(source: Option<IpAddr>) -> Result<reqwest::Client, ClientError> {
    static CLIENTS: OnceLock<Mutex<HashMap<Option<IpAddr>, reqwest::Client>>> = OnceLock::new();
    let mut clients = CLIENTS.get_or_init(Mutex::default).lock();
    if let Some(c) = clients.get(&source) {
        return Ok(c.clone());
    }
    let client = reqwest::Client::builder()
        .local_address(source)
        .tcp_nodelay(true)
        .build()
        .map_err(|e| ClientError::Open(e.to_string()))?;
    clients.insert(source, client.clone());
    Ok(client)
}
