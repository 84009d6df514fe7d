//! A protocol client over one WebSocket (or an emulated transport,
//! [`emulated`]): connect, subscribe, publish and read stamped
//! publications, answering the server's pings. It speaks v2 JSON or
//! Protobuf, or v1 JSON ([`Protocol`]) and may bind a chosen loopback
//! source address so large runs do not run out of ephemeral ports. Every
//! scenario speaks to the server through it.

use std::collections::VecDeque;
use std::net::IpAddr;
use std::time::Duration;

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use herald::transport::deflate::Wire;
use herald_protocol::Disconnect;
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

use crate::protocol::{classify_protobuf, Kind, Protocol, Sorted};
use crate::target::{Target, Transport};

mod emulated;
mod open;
mod outcome;
mod replies;

pub use outcome::{ClientError, Delivery, Event};

use replies::{PushEnvelope, Reply};

/// Deliveries kept while waiting for a reply (publications that overtook
/// it); past this many the connection is abandoned with
/// [`ClientError::Overflow`].
pub const MAX_STASHED: usize = 65_536;

/// Read buffer of each client socket. Small, because idle and storm runs
/// hold tens of thousands of connections in one process; a larger message
/// simply takes more reads.
pub const READ_BUFFER: usize = 8 * 1024;

type Socket = WebSocketStream<Wire<TcpStream>>;

/// What a client's messages travel over.
enum Conn {
    Ws(Box<Socket>),
    Emulated(Box<emulated::Emulated>),
}

/// One message worth returning from [`Client::read`].
enum Msg {
    Reply(u32, Reply),
    Delivery(Delivery),
}

/// One connected (protocol-level) client.
pub struct Client {
    conn: Conn,
    protocol: Protocol,
    next_id: u32,
    /// Whether the server wants `{}` back for each ping (v2).
    pong: bool,
    /// A ping was read and its pong not yet sent (a read dropped while
    /// sending it sends it next time).
    pong_due: bool,
    /// The last frame read and how far its messages have been handled.
    frame: Bytes,
    pos: usize,
    /// Deliveries read while waiting for a reply.
    stash: VecDeque<Delivery>,
    /// The id the server gave this client.
    pub client_id: String,
}

impl Client {
    /// Opens the WebSocket (from `source` when given) and completes the
    /// connect command, both within `timeout`. An empty token sends none.
    pub async fn connect(
        target: &Target,
        token: &str,
        source: Option<IpAddr>,
        timeout: Duration,
    ) -> Result<Self, ClientError> {
        tokio::time::timeout(timeout, Self::connect_inner(target, token, source))
            .await
            .map_err(|_| ClientError::Timeout(timeout, "connect"))?
    }

    async fn connect_inner(
        target: &Target,
        token: &str,
        source: Option<IpAddr>,
    ) -> Result<Self, ClientError> {
        let first_id = 1;
        let mut emulated_connect = None;
        let conn = match target.transport {
            Transport::WebSocket => Conn::Ws(Box::new(open::open_websocket(target, source).await?)),
            _ => {
                let connect = target.protocol.connect(first_id, token).ok_or_else(|| {
                    ClientError::Open("this protocol has no emulated transports".into())
                })?;
                let e = emulated::Emulated::open(target, source, connect.into_data().to_vec());
                emulated_connect = Some(first_id);
                Conn::Emulated(Box::new(e.await?))
            }
        };
        let mut client = Self {
            conn,
            protocol: target.protocol,
            next_id: 0,
            pong: false,
            pong_due: false,
            frame: Bytes::new(),
            pos: 0,
            stash: VecDeque::new(),
            client_id: String::new(),
        };
        let id = client.next_id();
        debug_assert_eq!(id, first_id);
        let reply = match (emulated_connect, client.protocol.connect(id, token)) {
            // Sent as the stream's request: only the reply is to come.
            (Some(id), _) => client.answer(id).await?,
            (None, Some(connect)) => client.request(id, connect).await?,
            (None, None) => {
                // Pusher: the server opens with connection_established.
                client.answer(id).await?;
                client.pong = true;
                return Ok(client);
            }
        };
        let result = reply.connect.or(reply.result).unwrap_or_default();
        client.pong = result.pong;
        client.client_id = result.client;
        if let Conn::Emulated(e) = &mut client.conn {
            e.session = result.session;
            e.node = result.node;
        }
        Ok(client)
    }

    /// Subscribes to `channel` and waits for the reply.
    pub async fn subscribe(&mut self, channel: &str, timeout: Duration) -> Result<(), ClientError> {
        let id = self.next_id();
        let cmd = self.protocol.subscribe(id, channel);
        tokio::time::timeout(timeout, self.request(id, cmd))
            .await
            .map_err(|_| ClientError::Timeout(timeout, "subscribe"))??;
        Ok(())
    }

    /// Publishes `data` (JSON text) into `channel` and waits for the reply,
    /// which for a channel with durable history comes after the commit.
    pub async fn publish(
        &mut self,
        channel: &str,
        data: &str,
        timeout: Duration,
    ) -> Result<(), ClientError> {
        let id = self.next_id();
        let cmd = self.protocol.publish(id, channel, data);
        tokio::time::timeout(timeout, self.request(id, cmd))
            .await
            .map_err(|_| ClientError::Timeout(timeout, "publish"))??;
        Ok(())
    }

    /// The next publication on any subscribed channel. Not bounded in time:
    /// callers race it against their own deadline.
    pub async fn next_delivery(&mut self) -> Result<Delivery, ClientError> {
        if let Some(d) = self.stash.pop_front() {
            return Ok(d);
        }
        loop {
            if let Msg::Delivery(d) = self.read().await? {
                return Ok(d);
            }
        }
    }

    /// Sends the command `build` makes for the next id without waiting for
    /// its reply, which [`Client::next_event`] returns with that id.
    /// `build` returns `None` for a command the protocol does not have.
    pub async fn send_command(
        &mut self,
        build: impl FnOnce(Protocol, u32) -> Option<Message>,
    ) -> Result<u32, ClientError> {
        let id = self.next_id();
        let cmd = build(self.protocol, id).ok_or_else(|| {
            ClientError::Unsupported(format!("{} has no such command", self.protocol.name()))
        })?;
        self.send(cmd).await?;
        Ok(id)
    }

    /// The next publication or reply. Like [`Client::next_delivery`], not
    /// bounded in time, and safe to race against other futures: dropping it
    /// loses no publication or reply.
    pub async fn next_event(&mut self) -> Result<Event, ClientError> {
        if let Some(d) = self.stash.pop_front() {
            return Ok(Event::Delivery(d));
        }
        Ok(match self.read().await? {
            Msg::Delivery(d) => Event::Delivery(d),
            Msg::Reply(id, reply) => Event::Reply {
                id,
                error: reply.error.map(|e| ClientError::Reply {
                    code: e.code,
                    message: e.message,
                }),
            },
        })
    }

    /// Reads until the connection ends; for idle connections, which only
    /// answer pings. Returns why it ended.
    pub async fn idle(&mut self) -> ClientError {
        loop {
            if let Err(e) = self.read().await {
                return e;
            }
        }
    }

    /// Sends a close frame (ends the stream of an emulated transport);
    /// errors do not matter any more.
    pub async fn close(self) {
        if let Conn::Ws(mut socket) = self.conn {
            let _ = (*socket).close(None).await;
        }
    }

    fn next_id(&mut self) -> u32 {
        self.next_id += 1;
        self.next_id
    }

    /// Sends command `id` and waits for its reply, keeping deliveries that
    /// arrive meanwhile.
    async fn request(&mut self, id: u32, cmd: Message) -> Result<Reply, ClientError> {
        self.send(cmd).await?;
        self.answer(id).await
    }

    /// Waits for the reply to command `id` (or a Pusher acknowledgement),
    /// keeping deliveries that arrive meanwhile.
    async fn answer(&mut self, id: u32) -> Result<Reply, ClientError> {
        loop {
            match self.read().await? {
                Msg::Reply(got, reply) if got == id || got == crate::protocol::PENDING => {
                    if let Some(e) = reply.error {
                        return Err(ClientError::Reply {
                            code: e.code,
                            message: e.message,
                        });
                    }
                    return Ok(reply);
                }
                Msg::Reply(..) => {}
                Msg::Delivery(d) => {
                    if self.stash.len() >= MAX_STASHED {
                        return Err(ClientError::Overflow);
                    }
                    self.stash.push_back(d);
                }
            }
        }
    }

    async fn send(&mut self, message: Message) -> Result<(), ClientError> {
        match &mut self.conn {
            Conn::Ws(socket) => socket
                .send(message)
                .await
                .map_err(|e| ClientError::Lost(e.to_string())),
            Conn::Emulated(e) => match message {
                Message::Text(text) => e.send(text.as_str()).await,
                _ => Err(ClientError::Lost(
                    "binary commands over an emulated transport".into(),
                )),
            },
        }
    }

    /// The next reply or delivery. Pings are answered and other pushes
    /// skipped here; a disconnect push becomes an error.
    async fn read(&mut self) -> Result<Msg, ClientError> {
        loop {
            if self.pong_due {
                self.send(self.protocol.pong()).await?;
                self.pong_due = false;
            }
            let Some((start, end)) = self.next_message()? else {
                self.read_frame().await?;
                continue;
            };
            if self.protocol == Protocol::V2Protobuf {
                let sorted = classify_protobuf(&self.frame[start..end])
                    .map_err(|e| ClientError::Garbled(e.to_string()))?;
                match sorted {
                    Sorted::Kind(Kind::Stamped(s)) => {
                        return Ok(Msg::Delivery(Delivery::Stamped(s)))
                    }
                    Sorted::Kind(Kind::Push) => {
                        return Ok(Msg::Delivery(Delivery::Unstamped(
                            "(a Protobuf publication without a stamp)".into(),
                        )))
                    }
                    Sorted::Kind(Kind::Ping) => self.pong_due = self.pong,
                    Sorted::Kind(_) => {}
                    Sorted::Reply(id, reply) => return Ok(Msg::Reply(id, Reply::from(*reply))),
                    Sorted::Disconnect(code, reason) => {
                        let code = u16::try_from(code).unwrap_or(u16::MAX);
                        return Err(ClientError::Closed(Disconnect::new(code, reason)));
                    }
                }
                continue;
            }
            let line = std::str::from_utf8(&self.frame[start..end])
                .map_err(|e| ClientError::Garbled(e.to_string()))?;
            match self.protocol.classify(line) {
                Kind::Stamped(s) => return Ok(Msg::Delivery(Delivery::Stamped(s))),
                Kind::Reply(id) => {
                    let reply = serde_json::from_str(line)
                        .map_err(|e| ClientError::Garbled(format!("{e}: {line:.200}")))?;
                    return Ok(Msg::Reply(id, reply));
                }
                Kind::Push => {
                    if let Some(d) = Self::unstamped_push(line)? {
                        return Ok(Msg::Delivery(d));
                    }
                }
                Kind::Ping => self.pong_due = self.pong,
                Kind::Other => {}
            }
        }
    }

    /// The bounds of the next message in the current frame: a non-empty
    /// line of JSON, or a length-prefixed Protobuf reply (its bytes after
    /// the prefix).
    fn next_message(&mut self) -> Result<Option<(usize, usize)>, ClientError> {
        let bytes = &self.frame[..];
        if self.protocol == Protocol::V2Protobuf {
            if self.pos >= bytes.len() {
                return Ok(None);
            }
            let mut rest = &bytes[self.pos..];
            let before = rest.len();
            let len = prost::encoding::decode_varint(&mut rest)
                .map_err(|e| ClientError::Garbled(e.to_string()))?;
            let start = self.pos + (before - rest.len());
            let end = usize::try_from(len)
                .ok()
                .and_then(|len| start.checked_add(len))
                .filter(|end| *end <= bytes.len())
                .ok_or_else(|| ClientError::Garbled("a reply longer than its frame".into()))?;
            self.pos = end;
            return Ok(Some((start, end)));
        }
        while self.pos < bytes.len() {
            let start = self.pos;
            let end = bytes[start..]
                .iter()
                .position(|b| *b == b'\n')
                .map_or(bytes.len(), |i| start + i);
            self.pos = end + 1;
            if !bytes[start..end].trim_ascii().is_empty() {
                return Ok(Some((start, end)));
            }
        }
        Ok(None)
    }

    /// A push without a stamp: a disconnect is an error, a publication is
    /// returned, anything else (join, leave, …) is skipped.
    fn unstamped_push(line: &str) -> Result<Option<Delivery>, ClientError> {
        let env: PushEnvelope = serde_json::from_str(line)
            .map_err(|e| ClientError::Garbled(format!("{e}: {line:.200}")))?;
        let Some(push) = env.push.or(env.result) else {
            return Ok(None);
        };
        if let Some(d) = push.disconnect {
            return Err(ClientError::Closed(Disconnect::new(d.code, d.reason)));
        }
        let is_pub = push.publication.is_some() || (push.kind == 0 && push.data.is_some());
        Ok(is_pub.then(|| Delivery::Unstamped(line.chars().take(100).collect())))
    }

    /// Reads one WebSocket data message (or what an emulated transport
    /// has streamed) as the current frame.
    async fn read_frame(&mut self) -> Result<(), ClientError> {
        let socket = match &mut self.conn {
            Conn::Ws(socket) => socket,
            Conn::Emulated(e) => {
                self.frame = e.next_frame().await?;
                self.pos = 0;
                return Ok(());
            }
        };
        loop {
            match socket.next().await {
                Some(Ok(Message::Text(t))) => {
                    self.frame = Bytes::from(t);
                    self.pos = 0;
                    return Ok(());
                }
                Some(Ok(Message::Binary(b))) => {
                    self.frame = b;
                    self.pos = 0;
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
