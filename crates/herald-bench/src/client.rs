//! A protocol v2 JSON client over one WebSocket: connect, subscribe, publish
//! and read publications, answering the server's pings. Every scenario
//! speaks to the server through it.

use std::collections::VecDeque;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use herald_protocol::Disconnect;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

/// Pushes kept while waiting for a reply (publications that overtook it);
/// past this many the connection is abandoned with [`ClientError::Overflow`].
pub const MAX_STASHED_PUSHES: usize = 65_536;

type Socket = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// What went wrong with a connection or a command.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("cannot open the WebSocket: {0}")]
    Open(String),
    #[error("no answer within {0:?} ({1})")]
    Timeout(Duration, &'static str),
    #[error("server closed the connection: code {} {:?}", .0.code, .0.reason)]
    Closed(Disconnect),
    #[error("connection lost: {0}")]
    Lost(String),
    /// The command failed; the connection stays usable.
    #[error("error reply {code}: {message}")]
    Reply { code: u32, message: String },
    #[error("unreadable message from the server: {0}")]
    Garbled(String),
    #[error("more than {MAX_STASHED_PUSHES} pushes arrived while waiting for a reply")]
    Overflow,
}

impl ClientError {
    /// A short label to count errors by in reports.
    pub fn kind(&self) -> String {
        match self {
            ClientError::Open(_) => "open".into(),
            ClientError::Timeout(..) => "timeout".into(),
            ClientError::Closed(d) => format!("closed {}", d.code),
            ClientError::Lost(_) => "lost".into(),
            ClientError::Reply { code, .. } => format!("reply {code}"),
            ClientError::Garbled(_) => "garbled".into(),
            ClientError::Overflow => "overflow".into(),
        }
    }
}

/// A publication pushed to a subscriber.
#[derive(Debug, Deserialize)]
pub struct Publication {
    #[serde(default)]
    pub channel: String,
    pub data: Box<RawValue>,
}

/// One message from the server: a reply (`id` > 0), a push, or a ping (`{}`).
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct Incoming {
    id: u32,
    error: Option<ErrorBody>,
    connect: Option<ConnectBody>,
    push: Option<PushBody>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct ErrorBody {
    code: u32,
    message: String,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct ConnectBody {
    client: String,
    pong: bool,
}

#[derive(Debug, Deserialize)]
struct PushBody {
    #[serde(default)]
    channel: String,
    #[serde(rename = "pub")]
    publication: Option<Publication>,
    disconnect: Option<DisconnectBody>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct DisconnectBody {
    code: u16,
    reason: String,
}

#[derive(Serialize)]
struct ConnectReq<'a> {
    #[serde(skip_serializing_if = "str::is_empty")]
    token: &'a str,
    name: &'a str,
}

#[derive(Serialize)]
struct ChannelReq<'a> {
    channel: &'a str,
}

#[derive(Serialize)]
struct PublishReq<'a> {
    channel: &'a str,
    data: &'a RawValue,
}

/// One connected (protocol-level) client.
pub struct Client {
    socket: Socket,
    next_id: u32,
    /// Whether the server wants `{}` back for each ping.
    pong: bool,
    /// Messages of the last frame not yet handled.
    inbox: VecDeque<String>,
    /// Publications read while waiting for a reply.
    stash: VecDeque<Publication>,
    /// The id the server gave this client.
    pub client_id: String,
}

impl Client {
    /// Opens the WebSocket and completes the connect command, both within
    /// `timeout`. An empty token sends none.
    pub async fn connect(url: &str, token: &str, timeout: Duration) -> Result<Self, ClientError> {
        tokio::time::timeout(timeout, Self::connect_inner(url, token))
            .await
            .map_err(|_| ClientError::Timeout(timeout, "connect"))?
    }

    async fn connect_inner(url: &str, token: &str) -> Result<Self, ClientError> {
        let (socket, _) = tokio_tungstenite::connect_async(url)
            .await
            .map_err(|e| ClientError::Open(e.to_string()))?;
        if let MaybeTlsStream::Plain(tcp) = socket.get_ref() {
            tcp.set_nodelay(true).ok();
        }
        let mut client = Self {
            socket,
            next_id: 0,
            pong: false,
            inbox: VecDeque::new(),
            stash: VecDeque::new(),
            client_id: String::new(),
        };
        let req = ConnectReq {
            token,
            name: "herald-bench",
        };
        let reply = client.request("connect", &req).await?;
        let result = reply.connect.unwrap_or_default();
        client.pong = result.pong;
        client.client_id = result.client;
        Ok(client)
    }

    /// Subscribes to `channel` and waits for the reply.
    pub async fn subscribe(&mut self, channel: &str, timeout: Duration) -> Result<(), ClientError> {
        let req = ChannelReq { channel };
        tokio::time::timeout(timeout, self.request("subscribe", &req))
            .await
            .map_err(|_| ClientError::Timeout(timeout, "subscribe"))??;
        Ok(())
    }

    /// Publishes `data` (JSON text) into `channel` and waits for the reply,
    /// which for a channel with durable history comes after the commit.
    pub async fn publish(
        &mut self,
        channel: &str,
        data: &RawValue,
        timeout: Duration,
    ) -> Result<(), ClientError> {
        let req = PublishReq { channel, data };
        tokio::time::timeout(timeout, self.request("publish", &req))
            .await
            .map_err(|_| ClientError::Timeout(timeout, "publish"))??;
        Ok(())
    }

    /// The next publication on any subscribed channel. Not bounded in time:
    /// callers race it against their own deadline.
    pub async fn next_publication(&mut self) -> Result<Publication, ClientError> {
        if let Some(p) = self.stash.pop_front() {
            return Ok(p);
        }
        loop {
            let msg = self.read().await?;
            if let Some(p) = Self::take_push(msg)? {
                return Ok(p);
            }
        }
    }

    /// Sends a close frame; errors do not matter any more.
    pub async fn close(mut self) {
        let _ = self.socket.close(None).await;
    }

    /// Sends `{"id":N,"<method>":<body>}` and waits for its reply, keeping
    /// publications that arrive meanwhile.
    async fn request(
        &mut self,
        method: &str,
        body: &impl Serialize,
    ) -> Result<Incoming, ClientError> {
        self.next_id += 1;
        let id = self.next_id;
        let body = serde_json::to_string(body).map_err(|e| ClientError::Garbled(e.to_string()))?;
        self.send(format!("{{\"id\":{id},\"{method}\":{body}}}"))
            .await?;
        loop {
            let msg = self.read().await?;
            if msg.id == id {
                if let Some(e) = msg.error {
                    return Err(ClientError::Reply {
                        code: e.code,
                        message: e.message,
                    });
                }
                return Ok(msg);
            }
            if let Some(p) = Self::take_push(msg)? {
                if self.stash.len() >= MAX_STASHED_PUSHES {
                    return Err(ClientError::Overflow);
                }
                self.stash.push_back(p);
            }
        }
    }

    /// Handles a message that is not the awaited reply: turns a disconnect
    /// push into an error, returns a publication, ignores the rest (other
    /// pushes, stray replies).
    fn take_push(msg: Incoming) -> Result<Option<Publication>, ClientError> {
        let Some(push) = msg.push else {
            return Ok(None);
        };
        if let Some(d) = push.disconnect {
            return Err(ClientError::Closed(Disconnect::new(d.code, d.reason)));
        }
        Ok(push.publication.map(|mut p| {
            if p.channel.is_empty() {
                p.channel = push.channel;
            }
            p
        }))
    }

    async fn send(&mut self, text: String) -> Result<(), ClientError> {
        self.socket
            .send(Message::text(text))
            .await
            .map_err(|e| ClientError::Lost(e.to_string()))
    }

    /// The next protocol message; pings (`{}`) are answered here and never
    /// returned.
    async fn read(&mut self) -> Result<Incoming, ClientError> {
        loop {
            while let Some(line) = self.inbox.pop_front() {
                let msg: Incoming = serde_json::from_str(&line)
                    .map_err(|e| ClientError::Garbled(format!("{e}: {line:.200}")))?;
                if msg.id == 0 && msg.push.is_none() {
                    if self.pong {
                        self.send("{}".into()).await?;
                    }
                    continue;
                }
                return Ok(msg);
            }
            self.read_frame().await?;
        }
    }

    /// Reads one WebSocket message into the inbox (one line per protocol
    /// message).
    async fn read_frame(&mut self) -> Result<(), ClientError> {
        loop {
            match self.socket.next().await {
                Some(Ok(Message::Text(t))) => {
                    self.inbox.extend(
                        t.as_str()
                            .split('\n')
                            .filter(|l| !l.trim().is_empty())
                            .map(str::to_owned),
                    );
                    return Ok(());
                }
                Some(Ok(Message::Close(frame))) => {
                    let d = frame.map_or_else(
                        || Disconnect::new(1005, ""),
                        |f| Disconnect::new(f.code.into(), f.reason.to_string()),
                    );
                    return Err(ClientError::Closed(d));
                }
                Some(Ok(_)) => {}
                Some(Err(e)) => return Err(ClientError::Lost(e.to_string())),
                None => return Err(ClientError::Lost("end of stream".into())),
            }
        }
    }
}
