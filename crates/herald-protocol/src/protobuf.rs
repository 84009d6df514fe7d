//! The Protobuf codec of protocol v2, as the official Protobuf SDKs (Dart,
//! Swift, Java, Go, and centrifuge-js's Protobuf build) speak it: commands
//! and replies each preceded by their length as a varint, several to a
//! binary frame. The messages are generated from `proto/client.proto`.
//!
//! Commands are read into the same [`Command`] the JSON codec makes, and
//! replies and pushes are written from the same shapes ([`crate::reply`]),
//! so the session does not care which format a client speaks. Payloads
//! (`data`, `info`) are bytes on this wire; Herald's channels carry JSON
//! (a JSON subscriber and a Protobuf one share them), so a payload must hold
//! JSON — a command whose payload does not is answered with error 107, and
//! the connection stays.

use std::collections::HashMap;
use std::sync::Arc;

use bytes::Bytes;
use prost::Message;
use serde_json::value::RawValue;

use crate::codes::ProtocolError;
use crate::command::{self, Command};
use crate::json::DecodeError;
use crate::model::{ClientInfo, PresenceEvent, Publication};
use crate::reply::{ConnectResult, HistoryResult, Push, ReplyBody, SubscribeResult};

/// The messages of `proto/client.proto`.
#[allow(clippy::all, missing_docs)]
pub mod pb {
    include!(concat!(
        env!("OUT_DIR"),
        "/centrifugal.centrifuge.protocol.rs"
    ));
}

/// The server's ping: an empty reply (its length, zero).
pub const PING: &[u8] = &[0];

/// Splits one binary frame into its commands.
pub fn decode_commands(frame: &[u8]) -> Result<Vec<Command>, DecodeError> {
    commands(frame).collect()
}

/// The commands of one binary frame, each decoded when it is reached (a
/// frame of many small commands never holds them all at once); the first
/// undecodable one ends it.
pub fn commands(frame: &[u8]) -> impl Iterator<Item = Result<Command, DecodeError>> + '_ {
    let mut buf = frame;
    let mut failed = false;
    std::iter::from_fn(move || {
        if buf.is_empty() || failed {
            return None;
        }
        let command = pb::Command::decode_length_delimited(&mut buf);
        failed = command.is_err();
        Some(command.map(command_from).map_err(DecodeError::from))
    })
}

/// An emulation request: `(node, session, data)`.
pub fn decode_emulation_request(body: &[u8]) -> Result<(String, String, Bytes), DecodeError> {
    let r = pb::EmulationRequest::decode(body)?;
    Ok((r.node, r.session, r.data))
}

/// Payloads found not to be JSON while reading a command.
#[derive(Default)]
struct Payloads {
    bad: bool,
}

impl Payloads {
    /// A payload as raw JSON: `None` when empty; `None` (and noted) when it
    /// is not JSON.
    fn raw(&mut self, data: Bytes) -> Option<command::Raw> {
        if data.is_empty() {
            return None;
        }
        let parsed = String::from_utf8(data.to_vec())
            .ok()
            .and_then(|text| RawValue::from_string(text).ok());
        if parsed.is_none() {
            self.bad = true;
        }
        parsed
    }
}

fn command_from(c: pb::Command) -> Command {
    let mut payloads = Payloads::default();
    let mut out = Command {
        id: c.id,
        connect: c.connect.map(|r| command::ConnectRequest {
            token: r.token,
            data: payloads.raw(r.data),
            subs: r
                .subs
                .into_iter()
                .map(|(channel, s)| (channel, subscribe_from(s, &mut payloads)))
                .collect(),
            name: r.name,
            version: r.version,
            headers: r.headers,
        }),
        subscribe: c.subscribe.map(|r| subscribe_from(r, &mut payloads)),
        unsubscribe: c
            .unsubscribe
            .map(|r| command::ChannelRequest { channel: r.channel }),
        publish: c.publish.map(|r| command::PublishRequest {
            channel: r.channel,
            data: payloads.raw(r.data),
        }),
        presence: c
            .presence
            .map(|r| command::ChannelRequest { channel: r.channel }),
        presence_stats: c
            .presence_stats
            .map(|r| command::ChannelRequest { channel: r.channel }),
        history: c.history.map(|r| command::HistoryRequest {
            channel: r.channel,
            limit: r.limit,
            since: r.since.map(|s| command::StreamPosition {
                offset: s.offset,
                epoch: s.epoch,
            }),
            reverse: r.reverse,
        }),
        ping: c.ping.map(|_| command::Empty {}),
        send: c.send.map(|r| command::SendRequest {
            data: payloads.raw(r.data),
        }),
        rpc: c.rpc.map(|r| command::RpcRequest {
            data: payloads.raw(r.data),
            method: r.method,
        }),
        refresh: c
            .refresh
            .map(|r| command::RefreshRequest { token: r.token }),
        sub_refresh: c.sub_refresh.map(|r| command::SubRefreshRequest {
            channel: r.channel,
            token: r.token,
        }),
        payload_not_json: false,
    };
    out.payload_not_json = payloads.bad;
    out
}

fn subscribe_from(r: pb::SubscribeRequest, payloads: &mut Payloads) -> command::SubscribeRequest {
    command::SubscribeRequest {
        channel: r.channel,
        token: r.token,
        recover: r.recover,
        epoch: r.epoch,
        offset: r.offset,
        data: payloads.raw(r.data),
        positioned: r.positioned,
        recoverable: r.recoverable,
        join_leave: r.join_leave,
        delta: r.delta,
        flag: r.flag,
        tf: r.tf.map(filter_from),
    }
}

fn filter_from(f: pb::FilterNode) -> crate::filter::FilterNode {
    crate::filter::FilterNode {
        op: f.op,
        key: f.key,
        cmp: f.cmp,
        val: f.val,
        vals: f.vals,
        nodes: f.nodes.into_iter().map(filter_from).collect(),
    }
}

fn bytes(b: Option<&Bytes>) -> Bytes {
    b.cloned().unwrap_or_default()
}

fn client_info(info: &ClientInfo) -> pb::ClientInfo {
    pb::ClientInfo {
        user: info.user.clone(),
        client: info.client.clone(),
        conn_info: bytes(info.conn_info.as_ref()),
        chan_info: bytes(info.chan_info.as_ref()),
    }
}

fn publication(p: &Publication) -> pb::Publication {
    pb::Publication {
        data: p.data.clone(),
        info: p.info.as_deref().map(client_info),
        offset: p.offset,
        tags: p.tags.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
        delta: p.delta,
    }
}

fn publications(pubs: &[Arc<Publication>]) -> Vec<pb::Publication> {
    pubs.iter().map(|p| publication(p)).collect()
}

fn subscribe_result(r: &SubscribeResult) -> pb::SubscribeResult {
    pb::SubscribeResult {
        expires: r.expires,
        ttl: r.ttl,
        recoverable: r.recoverable,
        epoch: r.epoch.clone(),
        publications: publications(&r.publications),
        recovered: r.recovered,
        offset: r.offset,
        positioned: r.positioned,
        data: bytes(r.data.as_ref()),
        was_recovering: r.was_recovering,
        delta: r.delta,
    }
}

fn connect_result(r: &ConnectResult) -> pb::ConnectResult {
    pb::ConnectResult {
        client: r.client.clone(),
        version: r.version.clone(),
        expires: r.expires,
        ttl: r.ttl,
        data: bytes(r.data.as_ref()),
        subs: r
            .subs
            .iter()
            .map(|(channel, s)| pb::SubscribeResultEntry {
                key: channel.clone(),
                value: Some(subscribe_result(s)),
            })
            .collect(),
        ping: r.ping,
        pong: r.pong,
        session: r.session.clone(),
        node: r.node.clone(),
        time: r.time,
    }
}

fn history_result(r: &HistoryResult) -> pb::HistoryResult {
    pb::HistoryResult {
        publications: publications(&r.publications),
        epoch: r.epoch.clone(),
        offset: r.offset,
    }
}

fn framed(reply: &pb::Reply) -> Vec<u8> {
    reply.encode_length_delimited_to_vec()
}

/// A successful reply to command `id`.
pub fn encode_reply(id: u32, body: &ReplyBody) -> Vec<u8> {
    let mut reply = pb::Reply {
        id,
        ..Default::default()
    };
    match body {
        ReplyBody::Connect(r) => reply.connect = Some(connect_result(r)),
        ReplyBody::Subscribe(r) => reply.subscribe = Some(subscribe_result(r)),
        ReplyBody::Unsubscribe => reply.unsubscribe = Some(pb::UnsubscribeResult {}),
        ReplyBody::Publish => reply.publish = Some(pb::PublishResult {}),
        ReplyBody::Ping => reply.ping = Some(pb::PingResult {}),
        ReplyBody::Presence(clients) => {
            let presence: HashMap<String, pb::ClientInfo> = clients
                .iter()
                .map(|(client, info)| (client.clone(), client_info(info)))
                .collect();
            reply.presence = Some(pb::PresenceResult { presence });
        }
        ReplyBody::PresenceStats {
            num_clients,
            num_users,
        } => {
            reply.presence_stats = Some(pb::PresenceStatsResult {
                num_clients: *num_clients,
                num_users: *num_users,
            })
        }
        ReplyBody::History(r) => reply.history = Some(history_result(r)),
        ReplyBody::Rpc(data) => {
            reply.rpc = Some(pb::RpcResult {
                data: bytes(data.as_ref()),
            })
        }
        ReplyBody::Refresh(r) => {
            reply.refresh = Some(pb::RefreshResult {
                client: r.client.clone(),
                version: r.version.clone(),
                expires: r.expires,
                ttl: r.ttl,
            })
        }
        ReplyBody::SubRefresh(r) => {
            reply.sub_refresh = Some(pb::SubRefreshResult {
                expires: r.expires,
                ttl: r.ttl,
            })
        }
    }
    framed(&reply)
}

/// An error reply to command `id`.
pub fn encode_error(id: u32, err: &ProtocolError) -> Vec<u8> {
    framed(&pb::Reply {
        id,
        error: Some(pb::Error {
            code: err.code,
            message: err.message.to_string(),
            temporary: err.temporary,
        }),
        ..Default::default()
    })
}

fn push_reply(push: pb::Push) -> Vec<u8> {
    framed(&pb::Reply {
        push: Some(push),
        ..Default::default()
    })
}

/// A push other than a publication or a join/leave event.
pub fn encode_push(push: &Push) -> Vec<u8> {
    let mut out = pb::Push::default();
    match push {
        Push::Unsubscribe {
            channel,
            code,
            reason,
        } => {
            out.channel = channel.clone();
            out.unsubscribe = Some(pb::Unsubscribe {
                code: *code,
                reason: reason.clone(),
            });
        }
        Push::Message { data } => out.message = Some(pb::Message { data: data.clone() }),
        Push::Subscribe { channel, result } => {
            out.channel = channel.clone();
            out.subscribe = Some(pb::Subscribe {
                recoverable: result.recoverable,
                epoch: result.epoch.clone(),
                offset: result.offset,
                positioned: result.positioned,
                data: bytes(result.data.as_ref()),
            });
        }
        Push::Disconnect {
            code,
            reason,
            reconnect,
        } => {
            out.disconnect = Some(pb::Disconnect {
                code: (*code).into(),
                reason: reason.clone(),
                reconnect: *reconnect,
            })
        }
        Push::Refresh { expires, ttl } => {
            out.refresh = Some(pb::Refresh {
                expires: *expires,
                ttl: *ttl,
            })
        }
    }
    push_reply(out)
}

/// A publication as a push.
pub fn encode_publication_push(p: &Publication) -> Bytes {
    Bytes::from(push_reply(pb::Push {
        channel: p.channel.to_string(),
        r#pub: Some(publication(p)),
        ..Default::default()
    }))
}

/// A join or leave event as a push.
pub fn encode_presence_push(e: &PresenceEvent) -> Bytes {
    let info = Some(client_info(&e.info));
    let mut push = pb::Push {
        channel: e.channel.to_string(),
        ..Default::default()
    };
    if e.join {
        push.join = Some(pb::Join { info });
    } else {
        push.leave = Some(pb::Leave { info });
    }
    Bytes::from(push_reply(push))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::command::Method;

    fn framed_command(c: &pb::Command) -> Vec<u8> {
        c.encode_length_delimited_to_vec()
    }

    #[test]
    fn commands_of_a_frame_are_read_in_order() {
        let mut frame = framed_command(&pb::Command {
            id: 1,
            connect: Some(pb::ConnectRequest {
                token: "t".into(),
                data: Bytes::from_static(b"{\"a\":1}"),
                ..Default::default()
            }),
            ..Default::default()
        });
        frame.extend(framed_command(&pb::Command {
            id: 2,
            publish: Some(pb::PublishRequest {
                channel: "c".into(),
                data: Bytes::from_static(b"[1,2]"),
            }),
            ..Default::default()
        }));
        // A pong: an empty command.
        frame.extend(framed_command(&pb::Command::default()));
        let commands = decode_commands(&frame).unwrap();
        assert_eq!(commands.len(), 3);
        let mut it = commands.into_iter().map(Command::into_method);
        match it.next().unwrap() {
            (1, Method::Connect(c)) => {
                assert_eq!(c.token, "t");
                assert_eq!(c.data.unwrap().get(), "{\"a\":1}");
            }
            other => panic!("{other:?}"),
        }
        match it.next().unwrap() {
            (2, Method::Publish(p)) => assert_eq!(p.data.unwrap().get(), "[1,2]"),
            other => panic!("{other:?}"),
        }
        assert!(matches!(it.next().unwrap(), (0, Method::Empty)));
    }

    #[test]
    fn a_payload_that_is_not_json_is_marked_not_dropped_silently() {
        let frame = framed_command(&pb::Command {
            id: 1,
            publish: Some(pb::PublishRequest {
                channel: "c".into(),
                data: Bytes::from_static(b"\xff\x00binary"),
            }),
            ..Default::default()
        });
        let commands = decode_commands(&frame).unwrap();
        assert!(commands[0].payload_not_json);
    }

    #[test]
    fn truncated_and_oversized_frames_are_errors() {
        let frame = framed_command(&pb::Command {
            id: 7,
            ping: Some(pb::PingRequest {}),
            ..Default::default()
        });
        assert!(decode_commands(&frame[..frame.len() - 1]).is_err());
        // A length far past the frame.
        assert!(decode_commands(&[0xff, 0xff, 0xff, 0xff, 0x0f, 1]).is_err());
        // A varint that never ends.
        assert!(decode_commands(&[0xff; 11]).is_err());
    }

    /// An empty server-side subscription result is written, not left out
    /// as a map would leave it.
    #[test]
    fn empty_subscription_results_of_a_connect_are_written() {
        let reply = encode_reply(
            1,
            &ReplyBody::Connect(ConnectResult {
                subs: vec![("news".into(), SubscribeResult::default())],
                ..Default::default()
            }),
        );
        let decoded = pb::Reply::decode_length_delimited(&reply[..]).unwrap();
        let subs = decoded.connect.unwrap().subs;
        assert_eq!(subs.len(), 1);
        assert_eq!(subs[0].key, "news");
        assert_eq!(subs[0].value, Some(pb::SubscribeResult::default()));
        // The entry's bytes: key (field 1) then an empty value (field 2).
        let needle = [0x0a, 4, b'n', b'e', b'w', b's', 0x12, 0];
        assert!(reply.windows(needle.len()).any(|w| w == needle));
    }

    #[test]
    fn replies_and_pushes_read_back() {
        let info = Arc::new(ClientInfo {
            user: "u".into(),
            client: "c1".into(),
            conn_info: Some(Bytes::from_static(b"{\"n\":1}")),
            chan_info: None,
        });
        let p = Publication::new(
            Arc::from("chat"),
            Bytes::from_static(b"{\"x\":1}"),
            Some(info),
        )
        .with_offset(5);
        let mut frame = encode_publication_push(&p).to_vec();
        frame.extend(encode_error(3, &ProtocolError::PERMISSION_DENIED));
        frame.extend_from_slice(PING);
        let mut buf = &frame[..];
        let push = pb::Reply::decode_length_delimited(&mut buf).unwrap();
        let push = push.push.unwrap();
        assert_eq!(push.channel, "chat");
        let publication = push.r#pub.unwrap();
        assert_eq!(&publication.data[..], b"{\"x\":1}");
        assert_eq!(publication.offset, 5);
        assert_eq!(&publication.info.unwrap().conn_info[..], b"{\"n\":1}");
        let error = pb::Reply::decode_length_delimited(&mut buf).unwrap();
        assert_eq!((error.id, error.error.unwrap().code), (3, 103));
        let ping = pb::Reply::decode_length_delimited(&mut buf).unwrap();
        assert_eq!(ping, pb::Reply::default());
        assert!(buf.is_empty());
    }
}
