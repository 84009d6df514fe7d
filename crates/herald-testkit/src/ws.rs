//! A raw protocol client over a real WebSocket: sends commands, waits for
//! their replies (keeping pushes for later), splits batched frames.

use std::collections::VecDeque;

use futures_util::{SinkExt, StreamExt};
use herald::transport::deflate::{self, Wire};
use serde_json::{json, Value};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

use crate::WAIT;

/// What the server sent, one protocol message at a time.
#[derive(Debug)]
pub enum Event {
    Msg(Value),
    Closed(Option<(u16, String)>),
}

/// A raw protocol client over a real WebSocket.
pub struct Ws {
    stream: WebSocketStream<Wire<TcpStream>>,
    /// The server's `Sec-WebSocket-Extensions` answer, if any.
    pub extensions: Option<String>,
    /// Messages read and set aside while waiting for a reply.
    pending: VecDeque<Value>,
    /// Messages of a received frame not yet read.
    inbox: VecDeque<Value>,
    next_id: u32,
    pub frames: usize,
}

impl Ws {
    /// Opens `url`; fails the test when the upgrade fails.
    pub async fn open(url: &str) -> Self {
        Self::try_open(url).await.expect("WebSocket upgrade")
    }

    /// Opens `url`, or says why the upgrade failed.
    pub async fn try_open(url: &str) -> Result<Self, String> {
        Self::try_open_with(url, &[]).await
    }

    /// Opens `url` with these headers on the upgrade request.
    pub async fn open_with_headers(url: &str, headers: &[(&str, &str)]) -> Self {
        Self::try_open_with(url, headers)
            .await
            .expect("WebSocket upgrade")
    }

    /// Opens `url` offering permessage-deflate (as browsers do), and
    /// compresses when the server agrees (`extensions` says).
    pub async fn open_compressed(url: &str) -> Self {
        let offer = [(
            "sec-websocket-extensions",
            "permessage-deflate; client_max_window_bits",
        )];
        Self::try_open_with(url, &offer)
            .await
            .expect("WebSocket upgrade")
    }

    async fn try_open_with(url: &str, headers: &[(&str, &str)]) -> Result<Self, String> {
        use tokio_tungstenite::tungstenite::client::IntoClientRequest;
        use tokio_tungstenite::tungstenite::http::{HeaderName, HeaderValue};
        let mut request = url.into_client_request().map_err(|e| e.to_string())?;
        for (name, value) in headers {
            request.headers_mut().insert(
                HeaderName::from_bytes(name.as_bytes()).expect("header name"),
                HeaderValue::from_str(value).expect("header value"),
            );
        }
        let authority = request.uri().authority().ok_or("no host")?.to_string();
        let handshake = async {
            let tcp = TcpStream::connect(&authority)
                .await
                .map_err(|e| e.to_string())?;
            let wire = if request.headers().contains_key("sec-websocket-extensions") {
                Wire::client(tcp, deflate::Settings::client())
            } else {
                Wire::plain(tcp)
            };
            tokio_tungstenite::client_async(request, wire)
                .await
                .map_err(|e| e.to_string())
        };
        let connected = tokio::time::timeout(WAIT, handshake)
            .await
            .expect("connect in time");
        let (stream, response) = connected?;
        let extensions = response
            .headers()
            .get("sec-websocket-extensions")
            .map(|v| v.to_str().unwrap_or_default().to_string());
        Ok(Self {
            stream,
            extensions,
            pending: VecDeque::new(),
            inbox: VecDeque::new(),
            next_id: 0,
            frames: 0,
        })
    }

    /// Opens `url` and completes the connect command with a token for
    /// `user`.
    pub async fn connected(url: &str, user: &str) -> Self {
        let mut ws = Self::open(url).await;
        let reply = ws
            .cmd(json!({"connect": {"token": crate::token(json!({"sub": user}))}}))
            .await;
        assert!(reply.get("connect").is_some(), "connect failed: {reply}");
        ws
    }

    /// Opens the WebSocket endpoint of the server at `addr`.
    pub async fn connect(addr: &str) -> Self {
        Self::open(&format!("ws://{addr}/connection/websocket")).await
    }

    pub async fn send_text(&mut self, text: &str) {
        self.stream.send(Message::text(text)).await.expect("send");
    }

    /// Sends a command with the next id and returns that id.
    pub async fn send(&mut self, mut command: Value) -> u32 {
        self.next_id += 1;
        command["id"] = json!(self.next_id);
        self.send_text(&command.to_string()).await;
        self.next_id
    }

    /// Sends a command and waits for its reply, keeping pushes for later.
    pub async fn cmd(&mut self, command: Value) -> Value {
        let id = self.send(command).await;
        self.reply(id).await
    }

    /// Waits for the reply with `id`, keeping other messages.
    pub async fn reply(&mut self, id: u32) -> Value {
        if let Some(i) = self.pending.iter().position(|m| m["id"] == json!(id)) {
            return self.pending.remove(i).unwrap();
        }
        loop {
            match self.read().await {
                Event::Msg(m) if m["id"] == json!(id) => return m,
                Event::Msg(m) => self.pending.push_back(m),
                Event::Closed(c) => panic!("closed while waiting for reply {id}: {c:?}"),
            }
        }
    }

    /// The next message that is not a ping.
    pub async fn next(&mut self) -> Event {
        if let Some(m) = self.pending.pop_front() {
            return Event::Msg(m);
        }
        loop {
            match self.read().await {
                Event::Msg(m) if m == json!({}) => {}
                e => return e,
            }
        }
    }

    /// The next push (skipping pings), failing on close.
    pub async fn push(&mut self) -> Value {
        match self.next().await {
            Event::Msg(m) => {
                assert!(m.get("push").is_some(), "expected a push, got {m}");
                m["push"].clone()
            }
            Event::Closed(c) => panic!("closed while waiting for a push: {c:?}"),
        }
    }

    /// Reads the next protocol message (pings included), answering nothing.
    pub async fn read(&mut self) -> Event {
        if let Some(m) = self.inbox.pop_front() {
            return Event::Msg(m);
        }
        loop {
            let msg = tokio::time::timeout(WAIT, self.stream.next())
                .await
                .expect("message in time");
            match msg {
                Some(Ok(Message::Text(t))) => {
                    self.frames += 1;
                    let mut lines =
                        t.as_str()
                            .split('\n')
                            .filter(|l| !l.trim().is_empty())
                            .map(|l| {
                                serde_json::from_str::<Value>(l)
                                    .unwrap_or_else(|e| panic!("bad JSON from server {l:?}: {e}"))
                            });
                    let first = lines.next().expect("non-empty frame");
                    self.inbox.extend(lines);
                    return Event::Msg(first);
                }
                Some(Ok(Message::Close(frame))) => {
                    return Event::Closed(frame.map(|f| (u16::from(f.code), f.reason.to_string())))
                }
                Some(Ok(_)) => {}
                Some(Err(_)) | None => return Event::Closed(None),
            }
        }
    }

    /// Reads until the server closes; returns the close code and reason.
    pub async fn closed(&mut self) -> (u16, String) {
        loop {
            if let Event::Closed(c) = self.read().await {
                return c.expect("close frame with a code");
            }
        }
    }

    pub async fn close(mut self) {
        let _ = self.stream.close(None).await;
    }

    /// Answers a server ping.
    pub async fn pong(&mut self) {
        self.send_text("{}").await;
    }
}

/// A close code as a number.
pub fn code(c: CloseCode) -> u16 {
    u16::from(c)
}
