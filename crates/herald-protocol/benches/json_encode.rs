//! The JSON writer against serde derives (`skip_serializing_if`, `RawValue`
//! payloads, itoa integers) on the paths where encoding costs: a
//! publication's push (once per publication on fan-out) and replies (once
//! per command). Both must produce the same bytes; the medians of seven
//! runs are printed. `cargo bench -p herald-protocol --bench json_encode`.

use std::collections::BTreeMap;
use std::hint::black_box;
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use herald_protocol::json;
use herald_protocol::reply::{ConnectResult, ReplyBody, SubscribeResult};
use herald_protocol::{ClientInfo, Publication};
use serde::Serialize;
use serde_json::value::RawValue;

fn raw(b: &[u8]) -> &RawValue {
    serde_json::from_slice::<&RawValue>(b).unwrap()
}
fn is_zero(v: &u64) -> bool {
    *v == 0
}
fn is_false(v: &bool) -> bool {
    !*v
}

#[derive(Serialize)]
struct Info<'a> {
    #[serde(skip_serializing_if = "str::is_empty")]
    user: &'a str,
    #[serde(skip_serializing_if = "str::is_empty")]
    client: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    conn_info: Option<&'a RawValue>,
    #[serde(skip_serializing_if = "Option::is_none")]
    chan_info: Option<&'a RawValue>,
}
#[derive(Serialize)]
struct Pub<'a> {
    data: &'a RawValue,
    #[serde(skip_serializing_if = "Option::is_none")]
    info: Option<Info<'a>>,
    #[serde(skip_serializing_if = "is_zero")]
    offset: u64,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    tags: &'a BTreeMap<String, String>,
}
fn pub_of(p: &Publication) -> Pub<'_> {
    Pub {
        data: raw(&p.data),
        info: p.info.as_deref().map(|i| Info {
            user: &i.user,
            client: &i.client,
            conn_info: i.conn_info.as_deref().map(raw),
            chan_info: i.chan_info.as_deref().map(raw),
        }),
        offset: p.offset,
        tags: &p.tags,
    }
}
#[derive(Serialize)]
struct PushInner<'a> {
    channel: &'a str,
    #[serde(rename = "pub")]
    publication: Pub<'a>,
}
#[derive(Serialize)]
struct PushOut<'a> {
    push: PushInner<'a>,
}

fn serde_push(p: &Publication) -> Vec<u8> {
    let mut buf = Vec::with_capacity(p.data.len() + p.channel.len() + 64);
    serde_json::to_writer(
        &mut buf,
        &PushOut {
            push: PushInner {
                channel: &p.channel,
                publication: pub_of(p),
            },
        },
    )
    .unwrap();
    buf
}

#[derive(Serialize)]
struct Sub<'a> {
    #[serde(skip_serializing_if = "is_false")]
    recoverable: bool,
    #[serde(skip_serializing_if = "str::is_empty")]
    epoch: &'a str,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    publications: Vec<Pub<'a>>,
    #[serde(skip_serializing_if = "is_false")]
    recovered: bool,
    #[serde(skip_serializing_if = "is_zero")]
    offset: u64,
    #[serde(skip_serializing_if = "is_false")]
    positioned: bool,
    #[serde(skip_serializing_if = "is_false")]
    was_recovering: bool,
}
#[derive(Serialize)]
struct SubReply<'a> {
    id: u32,
    subscribe: Sub<'a>,
}
fn serde_sub(id: u32, r: &SubscribeResult) -> Vec<u8> {
    let mut buf = Vec::with_capacity(64);
    serde_json::to_writer(
        &mut buf,
        &SubReply {
            id,
            subscribe: Sub {
                recoverable: r.recoverable,
                epoch: &r.epoch,
                publications: r.publications.iter().map(|p| pub_of(p)).collect(),
                recovered: r.recovered,
                offset: r.offset,
                positioned: r.positioned,
                was_recovering: r.was_recovering,
            },
        },
    )
    .unwrap();
    buf
}
#[derive(Serialize)]
struct Conn<'a> {
    client: &'a str,
    version: &'a str,
    #[serde(skip_serializing_if = "is_zero")]
    ping: u64,
    #[serde(skip_serializing_if = "is_false")]
    pong: bool,
}
#[derive(Serialize)]
struct ConnReply<'a> {
    id: u32,
    connect: Conn<'a>,
}
fn serde_connect(id: u32, r: &ConnectResult) -> Vec<u8> {
    let mut buf = Vec::with_capacity(64);
    serde_json::to_writer(
        &mut buf,
        &ConnReply {
            id,
            connect: Conn {
                client: &r.client,
                version: &r.version,
                ping: r.ping as u64,
                pong: r.pong,
            },
        },
    )
    .unwrap();
    buf
}

fn time<F: FnMut() -> usize>(name: &str, n: usize, mut f: F) -> f64 {
    let mut runs = Vec::new();
    for _ in 0..7 {
        let t = Instant::now();
        let mut total = 0;
        for _ in 0..n {
            total += black_box(f());
        }
        black_box(total);
        runs.push(t.elapsed().as_nanos() as f64 / n as f64);
    }
    runs.sort_by(|a, b| a.partial_cmp(b).unwrap());
    let med = runs[3];
    println!("{name:40} {med:8.1} ns/op (min {:.1})", runs[0]);
    med
}

fn main() {
    // Byte-for-byte equal output is checked first: a faster encoder of
    // something else would prove nothing.
    let info = Arc::new(ClientInfo {
        user: "42".into(),
        client: "0f9a3c1e-8b7d-4e2a-9c5f-1d2e3f4a5b6c".into(),
        conn_info: Some(Bytes::from_static(br#"{"name":"Alice"}"#)),
        chan_info: None,
    });
    let data = Bytes::from(format!(r#"{{"text":"{}","n":123}}"#, "x".repeat(80)));
    let p = Publication::new(Arc::from("chat:room"), data.clone(), Some(info.clone()))
        .with_offset(123456);
    assert_eq!(serde_push(&p), json::encode_publication_push(&p).to_vec());
    let plain = Publication::new(Arc::from("chat:room"), data.clone(), None);
    assert_eq!(
        serde_push(&plain),
        json::encode_publication_push(&plain).to_vec()
    );
    let pubs: Vec<Arc<Publication>> = (1..=10)
        .map(|i| {
            Arc::new(
                Publication::new(Arc::from("chat:room"), data.clone(), Some(info.clone()))
                    .with_offset(i),
            )
        })
        .collect();
    let sub = SubscribeResult {
        recoverable: true,
        epoch: "abcd1234".into(),
        publications: pubs,
        recovered: true,
        offset: 10,
        positioned: true,
        was_recovering: true,
        ..Default::default()
    };
    let sub_body = ReplyBody::Subscribe(sub);
    let ReplyBody::Subscribe(sub_ref) = &sub_body else {
        unreachable!()
    };
    assert_eq!(serde_sub(7, sub_ref), json::encode_reply(7, &sub_body));
    let conn = ConnectResult {
        client: "0f9a3c1e-8b7d-4e2a-9c5f-1d2e3f4a5b6c".into(),
        version: "0.1.0".into(),
        ping: 25,
        pong: true,
        ..Default::default()
    };
    let conn_body = ReplyBody::Connect(conn);
    let ReplyBody::Connect(conn_ref) = &conn_body else {
        unreachable!()
    };
    assert_eq!(
        serde_connect(1, conn_ref),
        json::encode_reply(1, &conn_body)
    );
    let n = 400_000;
    for round in 0..2 {
        println!("round {round}");
        time("push (info, offset): hand-written", n, || {
            json::encode_publication_push(&p).len()
        });
        time("push (info, offset): serde derive", n, || {
            serde_push(&p).len()
        });
        time("push (plain): hand-written", n, || {
            json::encode_publication_push(&plain).len()
        });
        time("push (plain): serde derive", n, || serde_push(&plain).len());
        time("subscribe reply, 10 pubs: hand-written", n / 10, || {
            json::encode_reply(7, &sub_body).len()
        });
        time("subscribe reply, 10 pubs: serde derive", n / 10, || {
            serde_sub(7, sub_ref).len()
        });
        time("connect reply: hand-written", n, || {
            json::encode_reply(1, &conn_body).len()
        });
        time("connect reply: serde derive", n, || {
            serde_connect(1, conn_ref).len()
        });
    }
}
