//! What nodes of a cluster tell each other, as it travels through a broker.
//! Publications and join/leave events are one JSON object per message; the
//! control messages (commands for users' connections, node announcements)
//! are in [`control`]. Brokers carry these bytes; nothing here does I/O.
//!
//! A publication is
//! `{"o":<offset>,"e":<epoch>,"d":true,"c":<channel>,"p":<pub>}`
//! where `<pub>` is the protocol's publication object and `"d"` (only when
//! true) says the publisher allows delta compression; the offset leads so
//! that a Redis script can assign it and prepend it to the rest (the
//! [`publication_tail`]). A join or leave is `{"j":true|false,"c":…,"i":<info>}`.

use std::borrow::Cow;
use std::sync::Arc;

use bytes::Bytes;
use herald_protocol::json::{
    append_publication, decode_client_info, decode_publication, encode_client_info, DecodeError,
};
use herald_protocol::{PresenceEvent, Publication};
use serde::Deserialize;
use serde_json::value::RawValue;

pub mod control;

pub enum Message {
    Publication(Publication),
    Presence(PresenceEvent),
}

/// The message without its opening `{"o":N,` (for a Redis script to
/// complete with the offset it assigns).
pub fn publication_tail(p: &Publication) -> Vec<u8> {
    let mut out = Vec::with_capacity(p.data.len() + p.channel.len() + 32);
    write_tail(&mut out, p);
    out
}

/// A complete publication message, offset and epoch included. (The
/// publication object repeats a non-zero offset; `"o"` is what counts.)
pub fn encode_publication_message(p: &Publication) -> Bytes {
    let mut out = Vec::with_capacity(p.data.len() + p.channel.len() + 64);
    out.extend_from_slice(b"{\"o\":");
    out.extend_from_slice(itoa::Buffer::new().format(p.offset).as_bytes());
    out.push(b',');
    if let Some(epoch) = &p.epoch {
        out.extend_from_slice(b"\"e\":");
        write_str(&mut out, epoch);
        out.push(b',');
    }
    write_tail(&mut out, p);
    Bytes::from(out)
}

fn write_tail(out: &mut Vec<u8>, p: &Publication) {
    if p.use_delta {
        out.extend_from_slice(b"\"d\":true,");
    }
    out.extend_from_slice(b"\"c\":");
    write_str(out, &p.channel);
    out.extend_from_slice(b",\"p\":");
    append_publication(out, p);
    out.push(b'}');
}

pub fn encode_presence_message(e: &PresenceEvent) -> Bytes {
    let mut out = Vec::with_capacity(128);
    out.extend_from_slice(if e.join {
        b"{\"j\":true,\"c\":"
    } else {
        b"{\"j\":false,\"c\":"
    });
    write_str(&mut out, &e.channel);
    out.extend_from_slice(b",\"i\":");
    out.extend_from_slice(&encode_client_info(&e.info));
    out.push(b'}');
    Bytes::from(out)
}

/// Strings are borrowed from the message where they need no unescaping,
/// so that each becomes one `Arc<str>` without a `String` first.
#[derive(Deserialize)]
struct Envelope<'a> {
    #[serde(default)]
    o: u64,
    #[serde(borrow, default)]
    e: Option<Cow<'a, str>>,
    #[serde(default)]
    d: bool,
    #[serde(borrow)]
    c: Cow<'a, str>,
    #[serde(borrow, default)]
    p: Option<&'a RawValue>,
    #[serde(default)]
    j: Option<bool>,
    #[serde(borrow, default)]
    i: Option<&'a RawValue>,
}

pub fn decode(payload: &[u8]) -> Result<Message, DecodeError> {
    let env: Envelope<'_> = serde_json::from_slice(payload)?;
    let channel: Arc<str> = Arc::from(&*env.c);
    if let (Some(join), Some(info)) = (env.j, env.i) {
        let info = decode_client_info(info.get().as_bytes())?;
        return Ok(Message::Presence(PresenceEvent::new(
            channel,
            Arc::new(info),
            join,
        )));
    }
    let Some(p) = env.p else {
        return Err(DecodeError::Malformed(serde::de::Error::custom(
            "neither a publication nor a presence event",
        )));
    };
    let mut publication = decode_publication(channel, p.get().as_bytes())?;
    if env.o > 0 {
        publication.offset = env.o;
    }
    publication.epoch = env.e.as_deref().map(Arc::from);
    publication.use_delta = env.d;
    Ok(Message::Publication(publication))
}

fn write_str(out: &mut Vec<u8>, s: &str) {
    serde_json::to_writer(&mut *out, s).expect("writing to a Vec cannot fail");
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use herald_protocol::ClientInfo;

    use super::*;

    #[test]
    fn publications_and_events_round_trip() {
        let info = Arc::new(ClientInfo {
            user: "u".into(),
            client: "c".into(),
            conn_info: Some(Bytes::from_static(b"{\"a\":1}")),
            chan_info: None,
        });
        let mut tags = BTreeMap::new();
        tags.insert("t".into(), "v".into());
        let p = Publication::new(
            Arc::from("chat:\"odd\" name.*>"),
            Bytes::from_static(b"{\"x\":[1,2]}"),
            Some(info.clone()),
        )
        .with_offset(7)
        .with_epoch(Arc::from("ep"))
        .with_tags(tags)
        .with_use_delta(true);
        let Message::Publication(back) = decode(&encode_publication_message(&p)).unwrap() else {
            panic!("not a publication");
        };
        assert!(back.use_delta, "the publisher's delta allowance travels");
        assert_eq!(
            encode_publication_message(&back),
            encode_publication_message(&p)
        );
        assert_eq!(back.epoch.as_deref(), Some("ep"));

        // What a Redis script produces from the tail.
        let mut scripted = b"{\"o\":9,\"e\":\"x\",".to_vec();
        scripted.extend_from_slice(&publication_tail(&p));
        let Message::Publication(back) = decode(&scripted).unwrap() else {
            panic!("not a publication");
        };
        assert_eq!((back.offset, back.epoch.as_deref()), (9, Some("x")));

        let e = PresenceEvent::new(Arc::from("room"), info, false);
        let Message::Presence(back) = decode(&encode_presence_message(&e)).unwrap() else {
            panic!("not an event");
        };
        assert_eq!(
            (&*back.channel, &back.info, back.join),
            (&*e.channel, &e.info, e.join)
        );
        assert!(decode(b"{\"c\":\"x\"}").is_err());
        assert!(decode(b"not json").is_err());
    }
}
