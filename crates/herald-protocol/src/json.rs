//! The JSON codec of protocol v2: newline-separated commands in, replies and
//! pushes out. Payloads (`data`, `info`) are raw JSON embedded as is. Output is
//! written by hand rather than through derived serializers because it is the
//! hot path of fan-out and the protocol omits zero values field by field.

use std::sync::Arc;

use bytes::Bytes;
use thiserror::Error;

use crate::codes::ProtocolError;
use crate::command::Command;
use crate::model::{ClientInfo, PresenceEvent, Publication};
use crate::reply::{ConnectResult, HistoryResult, Push, ReplyBody, SubscribeResult};

/// The server's ping: an empty reply.
pub const PING: &str = "{}";

#[derive(Debug, Error)]
pub enum DecodeError {
    #[error("frame is not UTF-8")]
    NotUtf8,
    #[error("malformed command: {0}")]
    Malformed(#[from] serde_json::Error),
    #[error("malformed Protobuf command: {0}")]
    Protobuf(#[from] prost::DecodeError),
}

/// Splits one transport frame into its commands. Blank lines are skipped.
pub fn decode_commands(frame: &[u8]) -> Result<Vec<Command>, DecodeError> {
    commands(frame).collect()
}

/// The commands of one transport frame, each read when it is reached (a
/// frame of many commands never holds them all at once). Blank lines are
/// skipped; a frame that is not UTF-8 yields one error.
pub fn commands(frame: &[u8]) -> impl Iterator<Item = Result<Command, DecodeError>> + '_ {
    let (text, bad) = match std::str::from_utf8(frame) {
        Ok(text) => (text, None),
        Err(_) => ("", Some(Err(DecodeError::NotUtf8))),
    };
    bad.into_iter().chain(
        text.split('\n')
            .map(str::trim)
            .filter(|line| !line.is_empty())
            .map(|line| serde_json::from_str(line).map_err(DecodeError::from)),
    )
}

/// Whether `bytes` is one well-formed JSON value (used to validate payloads
/// before they are embedded raw into frames).
pub fn is_valid_json(bytes: &[u8]) -> bool {
    // Parsing from `str` also checks that strings are valid UTF-8, which
    // parsing bytes into `IgnoredAny` does not; frames must be UTF-8 text.
    std::str::from_utf8(bytes)
        .is_ok_and(|s| serde_json::from_str::<serde::de::IgnoredAny>(s).is_ok())
}

/// A tiny JSON object writer that skips zero values.
struct Obj<'a> {
    buf: &'a mut Vec<u8>,
    first: bool,
}

impl<'a> Obj<'a> {
    fn open(buf: &'a mut Vec<u8>) -> Self {
        buf.push(b'{');
        Self { buf, first: true }
    }
    fn key(&mut self, key: &str) {
        if !self.first {
            self.buf.push(b',');
        }
        self.first = false;
        write_str(self.buf, key);
        self.buf.push(b':');
    }
    fn str(&mut self, key: &str, value: &str) {
        if !value.is_empty() {
            self.key(key);
            write_str(self.buf, value);
        }
    }
    fn uint(&mut self, key: &str, value: u64) {
        if value != 0 {
            self.key(key);
            self.buf
                .extend_from_slice(itoa::Buffer::new().format(value).as_bytes());
        }
    }
    fn int(&mut self, key: &str, value: i64) {
        if value != 0 {
            self.key(key);
            self.buf
                .extend_from_slice(itoa::Buffer::new().format(value).as_bytes());
        }
    }
    fn bool(&mut self, key: &str, value: bool) {
        if value {
            self.key(key);
            self.buf.extend_from_slice(b"true");
        }
    }
    fn raw(&mut self, key: &str, value: Option<&[u8]>) {
        if let Some(v) = value {
            self.key(key);
            write_one_line(self.buf, v);
        }
    }
    /// Opens a nested object under `key`; close it with [`Obj::close`].
    fn nested(&mut self, key: &str) -> Obj<'_> {
        self.key(key);
        Obj::open(self.buf)
    }
    fn close(self) {
        self.buf.push(b'}');
    }
}

/// Appends a raw JSON value on one line: a line break in it (whitespace
/// between tokens, since JSON strings cannot hold one unescaped) becomes a
/// space, so that a value written pretty (a server API publish, a Protobuf
/// client's payload) never splits the newline-separated messages of a
/// frame.
fn write_one_line(buf: &mut Vec<u8>, value: &[u8]) {
    let start = buf.len();
    buf.extend_from_slice(value);
    if value.iter().any(|b| matches!(b, b'\n' | b'\r')) {
        for b in &mut buf[start..] {
            if matches!(b, b'\n' | b'\r') {
                *b = b' ';
            }
        }
    }
}

fn write_str(buf: &mut Vec<u8>, s: &str) {
    // Writing into a Vec cannot fail.
    let _ = serde_json::to_writer(&mut *buf, s);
}

fn write_info(o: &mut Obj<'_>, key: &str, info: &ClientInfo) {
    o.key(key);
    client_info_object(o.buf, info);
}

fn client_info_object(buf: &mut Vec<u8>, info: &ClientInfo) {
    let mut i = Obj::open(buf);
    i.str("user", &info.user);
    i.str("client", &info.client);
    i.raw("conn_info", info.conn_info.as_deref());
    i.raw("chan_info", info.chan_info.as_deref());
    i.close();
}

fn write_publication(o: &mut Obj<'_>, key: &str, p: &Publication) {
    o.key(key);
    publication_object(o.buf, p);
}

/// One publication as a bare JSON object (`{"data":…,"info":…,"offset":…}`),
/// as history replies of the server API carry it.
pub fn encode_publication(p: &Publication) -> Vec<u8> {
    let mut buf = Vec::with_capacity(p.data.len() + 64);
    publication_object(&mut buf, p);
    buf
}

/// Appends [`encode_publication`]'s object to `buf`.
pub fn append_publication(buf: &mut Vec<u8>, p: &Publication) {
    publication_object(buf, p);
}

/// A client's info as a bare JSON object, as presence replies carry it.
pub fn encode_client_info(info: &ClientInfo) -> Vec<u8> {
    let mut buf = Vec::with_capacity(64);
    client_info_object(&mut buf, info);
    buf
}

fn publication_object(buf: &mut Vec<u8>, p: &Publication) {
    let mut w = Obj::open(buf);
    w.raw("data", Some(&p.data));
    if let Some(info) = &p.info {
        write_info(&mut w, "info", info);
    }
    w.uint("offset", p.offset);
    if !p.tags.is_empty() {
        let mut t = w.nested("tags");
        for (k, v) in &p.tags {
            t.key(k);
            write_str(t.buf, v);
        }
        t.close();
    }
    w.bool("delta", p.delta);
    w.close();
}

fn write_publications(o: &mut Obj<'_>, key: &str, pubs: &[Arc<Publication>]) {
    if pubs.is_empty() {
        return;
    }
    o.key(key);
    o.buf.push(b'[');
    for (i, p) in pubs.iter().enumerate() {
        if i > 0 {
            o.buf.push(b',');
        }
        publication_object(o.buf, p);
    }
    o.buf.push(b']');
}

/// `{"push":{"channel":..,"pub":{..}}}` for one publication.
pub fn encode_publication_push(p: &Publication) -> Bytes {
    let mut buf = Vec::with_capacity(p.data.len() + p.channel.len() + 64);
    let mut root = Obj::open(&mut buf);
    let mut push = root.nested("push");
    push.str("channel", &p.channel);
    write_publication(&mut push, "pub", p);
    push.close();
    root.close();
    Bytes::from(buf)
}

/// `{"channel":..,"pub":{..}}`: a publication as unidirectional transports
/// send it.
pub fn encode_uni_publication_push(p: &Publication) -> Bytes {
    let mut buf = Vec::with_capacity(p.data.len() + p.channel.len() + 48);
    let mut push = Obj::open(&mut buf);
    push.str("channel", &p.channel);
    write_publication(&mut push, "pub", p);
    push.close();
    Bytes::from(buf)
}

/// `{"channel":..,"join"|"leave":{"info":{..}}}`: a join or leave event as
/// unidirectional transports send it.
pub fn encode_uni_presence_push(e: &PresenceEvent) -> Bytes {
    let mut buf = Vec::with_capacity(e.channel.len() + 96);
    let mut push = Obj::open(&mut buf);
    push.str("channel", &e.channel);
    let mut event = push.nested(if e.join { "join" } else { "leave" });
    write_info(&mut event, "info", &e.info);
    event.close();
    push.close();
    Bytes::from(buf)
}

/// `{"connect":{..}}`: a connect result as the first push of a
/// unidirectional connection.
pub fn encode_uni_connect(r: &ConnectResult) -> Vec<u8> {
    let mut buf = Vec::with_capacity(128);
    let mut root = Obj::open(&mut buf);
    write_connect_result(&mut root, r);
    root.close();
    buf
}

/// A unidirectional connection's one message from the client: its connect
/// request, as command 1.
pub fn decode_connect_request(frame: &[u8]) -> Result<Command, DecodeError> {
    let text = std::str::from_utf8(frame).map_err(|_| DecodeError::NotUtf8)?;
    Ok(Command {
        id: 1,
        connect: Some(serde_json::from_str(text.trim())?),
        ..Default::default()
    })
}

/// `{"push":{"channel":..,"join"|"leave":{"info":{..}}}}` for a join or
/// leave event.
pub fn encode_presence_push(e: &PresenceEvent) -> Bytes {
    let mut buf = Vec::with_capacity(e.channel.len() + 96);
    let mut root = Obj::open(&mut buf);
    let mut push = root.nested("push");
    push.str("channel", &e.channel);
    let mut event = push.nested(if e.join { "join" } else { "leave" });
    write_info(&mut event, "info", &e.info);
    event.close();
    push.close();
    root.close();
    Bytes::from(buf)
}

fn write_subscribe_result(o: &mut Obj<'_>, key: &str, r: &SubscribeResult) {
    let mut w = o.nested(key);
    w.bool("expires", r.expires);
    w.uint("ttl", r.ttl.into());
    w.bool("recoverable", r.recoverable);
    w.str("epoch", &r.epoch);
    write_publications(&mut w, "publications", &r.publications);
    w.bool("recovered", r.recovered);
    w.uint("offset", r.offset);
    w.bool("positioned", r.positioned);
    w.raw("data", r.data.as_deref());
    w.bool("was_recovering", r.was_recovering);
    w.bool("delta", r.delta);
    w.close();
}

fn write_connect_result(o: &mut Obj<'_>, r: &ConnectResult) {
    let mut w = o.nested("connect");
    w.str("client", &r.client);
    w.str("version", &r.version);
    w.bool("expires", r.expires);
    w.uint("ttl", r.ttl.into());
    w.raw("data", r.data.as_deref());
    if !r.subs.is_empty() {
        let mut subs = w.nested("subs");
        for (channel, sub) in &r.subs {
            write_subscribe_result(&mut subs, channel, sub);
        }
        subs.close();
    }
    w.uint("ping", r.ping.into());
    w.bool("pong", r.pong);
    w.str("session", &r.session);
    w.str("node", &r.node);
    w.int("time", r.time);
    w.close();
}

fn write_history(o: &mut Obj<'_>, r: &HistoryResult) {
    let mut w = o.nested("history");
    write_publications(&mut w, "publications", &r.publications);
    w.str("epoch", &r.epoch);
    w.uint("offset", r.offset);
    w.close();
}

/// A successful reply to command `id`.
pub fn encode_reply(id: u32, body: &ReplyBody) -> Vec<u8> {
    let mut buf = Vec::with_capacity(64);
    let mut root = Obj::open(&mut buf);
    root.uint("id", id.into());
    match body {
        ReplyBody::Connect(r) => write_connect_result(&mut root, r),
        ReplyBody::Subscribe(r) => write_subscribe_result(&mut root, "subscribe", r),
        ReplyBody::Unsubscribe => root.nested("unsubscribe").close(),
        ReplyBody::Publish => root.nested("publish").close(),
        ReplyBody::Ping => root.nested("ping").close(),
        ReplyBody::Presence(clients) => {
            let mut w = root.nested("presence");
            let mut p = w.nested("presence");
            for (client, info) in clients {
                write_info(&mut p, client, info);
            }
            p.close();
            w.close();
        }
        ReplyBody::PresenceStats {
            num_clients,
            num_users,
        } => {
            let mut w = root.nested("presence_stats");
            w.uint("num_clients", (*num_clients).into());
            w.uint("num_users", (*num_users).into());
            w.close();
        }
        ReplyBody::History(r) => write_history(&mut root, r),
        ReplyBody::Rpc(data) => {
            let mut w = root.nested("rpc");
            w.raw("data", data.as_deref());
            w.close();
        }
        ReplyBody::Refresh(r) => {
            let mut w = root.nested("refresh");
            w.str("client", &r.client);
            w.str("version", &r.version);
            w.bool("expires", r.expires);
            w.uint("ttl", r.ttl.into());
            w.close();
        }
        ReplyBody::SubRefresh(r) => {
            let mut w = root.nested("sub_refresh");
            w.bool("expires", r.expires);
            w.uint("ttl", r.ttl.into());
            w.close();
        }
    }
    root.close();
    buf
}

/// An error reply to command `id`.
pub fn encode_error(id: u32, err: &ProtocolError) -> Vec<u8> {
    let mut buf = Vec::with_capacity(64);
    let mut root = Obj::open(&mut buf);
    root.uint("id", id.into());
    let mut e = root.nested("error");
    e.uint("code", err.code.into());
    e.str("message", &err.message);
    e.bool("temporary", err.temporary);
    e.close();
    root.close();
    buf
}

/// A push other than a publication.
pub fn encode_push(push: &Push) -> Vec<u8> {
    let mut buf = Vec::with_capacity(64);
    let mut root = Obj::open(&mut buf);
    let mut w = root.nested("push");
    write_push_body(&mut w, push);
    w.close();
    root.close();
    buf
}

/// A push as unidirectional transports send it: the bare push object.
pub fn encode_uni_push(push: &Push) -> Vec<u8> {
    let mut buf = Vec::with_capacity(64);
    let mut w = Obj::open(&mut buf);
    write_push_body(&mut w, push);
    w.close();
    buf
}

fn write_push_body(w: &mut Obj<'_>, push: &Push) {
    match push {
        Push::Unsubscribe {
            channel,
            code,
            reason,
        } => {
            w.str("channel", channel);
            let mut u = w.nested("unsubscribe");
            u.uint("code", (*code).into());
            u.str("reason", reason);
            u.close();
        }
        Push::Message { data } => {
            let mut m = w.nested("message");
            m.raw("data", Some(data));
            m.close();
        }
        Push::Subscribe { channel, result } => {
            w.str("channel", channel);
            let mut s = w.nested("subscribe");
            s.bool("recoverable", result.recoverable);
            s.str("epoch", &result.epoch);
            s.uint("offset", result.offset);
            s.bool("positioned", result.positioned);
            s.raw("data", result.data.as_deref());
            s.close();
        }
        Push::Disconnect {
            code,
            reason,
            reconnect,
        } => {
            let mut d = w.nested("disconnect");
            d.uint("code", (*code).into());
            d.str("reason", reason);
            d.bool("reconnect", *reconnect);
            d.close();
        }
        Push::Refresh { expires, ttl } => {
            let mut r = w.nested("refresh");
            r.bool("expires", *expires);
            r.uint("ttl", (*ttl).into());
            r.close();
        }
    }
}

/// Reads back a publication object written by [`encode_publication`] (as
/// nodes of a cluster pass publications to each other); `data` and the
/// info's payloads stay raw.
pub fn decode_publication(channel: Arc<str>, object: &[u8]) -> Result<Publication, DecodeError> {
    let w: WirePublication<'_> = serde_json::from_slice(object)?;
    let p = Publication::new(
        channel,
        raw_bytes(w.data),
        w.info.map(|i| Arc::new(i.into())),
    )
    .with_offset(w.offset)
    .with_tags(w.tags);
    Ok(p)
}

/// Reads back a client info object written by [`encode_client_info`].
pub fn decode_client_info(object: &[u8]) -> Result<ClientInfo, DecodeError> {
    let w: WireInfo<'_> = serde_json::from_slice(object)?;
    Ok(w.into())
}

#[derive(serde::Deserialize)]
struct WirePublication<'a> {
    #[serde(borrow)]
    data: &'a serde_json::value::RawValue,
    #[serde(borrow, default)]
    info: Option<WireInfo<'a>>,
    #[serde(default)]
    offset: u64,
    #[serde(default)]
    tags: std::collections::BTreeMap<String, String>,
}

#[derive(serde::Deserialize)]
struct WireInfo<'a> {
    #[serde(default)]
    user: String,
    #[serde(default)]
    client: String,
    #[serde(borrow, default)]
    conn_info: Option<&'a serde_json::value::RawValue>,
    #[serde(borrow, default)]
    chan_info: Option<&'a serde_json::value::RawValue>,
}

impl From<WireInfo<'_>> for ClientInfo {
    fn from(w: WireInfo<'_>) -> Self {
        Self {
            user: w.user,
            client: w.client,
            conn_info: w.conn_info.map(raw_bytes),
            chan_info: w.chan_info.map(raw_bytes),
        }
    }
}

fn raw_bytes(raw: &serde_json::value::RawValue) -> Bytes {
    Bytes::copy_from_slice(raw.get().as_bytes())
}

#[cfg(test)]
mod tests;
