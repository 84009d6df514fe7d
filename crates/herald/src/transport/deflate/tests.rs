use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream};
use tokio_tungstenite::tungstenite::protocol::frame::coding::{Data, OpCode};
use tokio_tungstenite::tungstenite::protocol::frame::FrameHeader;
use tokio_tungstenite::tungstenite::protocol::{Role, WebSocketConfig};
use tokio_tungstenite::tungstenite::{self, Message};
use tokio_tungstenite::WebSocketStream;

use super::*;

const LIMIT: usize = 64 * 1024;

fn settings(min_size: usize) -> Settings {
    Settings {
        level: 1,
        min_size,
        read_limit: LIMIT,
    }
}

fn full() -> Agreed {
    agree(["permessage-deflate"]).unwrap()
}

type Ws = WebSocketStream<Wire<DuplexStream>>;

async fn socket(role: Role, wire: Wire<DuplexStream>) -> Ws {
    let config = WebSocketConfig::default()
        .max_message_size(Some(LIMIT))
        .max_frame_size(Some(LIMIT));
    WebSocketStream::from_raw_socket(wire, role, Some(config)).await
}

/// A server and a client WebSocket, both compressing, over memory.
async fn pair(min_size: usize) -> (Ws, Ws) {
    let (a, b) = tokio::io::duplex(1 << 20);
    let server = socket(
        Role::Server,
        Wire::compressed(a, settings(min_size), full()),
    )
    .await;
    let client = socket(
        Role::Client,
        Wire::compressed(b, settings(min_size), full()),
    )
    .await;
    (server, client)
}

fn text(n: usize) -> String {
    (0..n)
        .map(|i| format!("{{\"n\":{i},\"chat\":\"hello\"}}\n"))
        .collect()
}

#[tokio::test]
async fn messages_cross_compressed_both_ways() {
    let (mut server, mut client) = pair(0).await;
    for body in [String::new(), "x".into(), text(3), text(2000)] {
        client.send(Message::text(body.clone())).await.unwrap();
        let got = server.next().await.unwrap().unwrap();
        assert_eq!(got, Message::text(body.clone()));
        server
            .send(Message::binary(body.clone().into_bytes()))
            .await
            .unwrap();
        let got = client.next().await.unwrap().unwrap();
        assert_eq!(got, Message::binary(body.into_bytes()));
    }
}

/// Reads one frame's header and payload off a raw stream.
async fn raw_frame(io: &mut DuplexStream) -> (FrameHeader, Vec<u8>) {
    let mut bytes = Vec::new();
    loop {
        let mut cursor = Cursor::new(&bytes[..]);
        if let Some((header, len)) = FrameHeader::parse(&mut cursor).unwrap() {
            let start = cursor.position() as usize;
            while bytes.len() < start + len as usize {
                bytes.push(io.read_u8().await.unwrap());
            }
            return (header, bytes[start..].to_vec());
        }
        bytes.push(io.read_u8().await.unwrap());
    }
}

#[tokio::test]
async fn what_the_server_writes_is_marked_and_smaller() {
    let (a, mut b) = tokio::io::duplex(1 << 20);
    let mut server = socket(Role::Server, Wire::compressed(a, settings(100), full())).await;
    let big = text(200);
    server.send(Message::text(big.clone())).await.unwrap();
    let (header, payload) = raw_frame(&mut b).await;
    assert!(header.rsv1, "a large message goes out compressed");
    assert!(header.mask.is_none());
    assert!(
        payload.len() * 5 < big.len(),
        "{} of {}",
        payload.len(),
        big.len()
    );
    let mut whole = payload.clone();
    whole.extend_from_slice(&SYNC_TAIL);
    assert_eq!(inflate(&whole, LIMIT).unwrap(), big.as_bytes());

    // Under compression_min_size, and control frames: as they are.
    server.send(Message::text("short")).await.unwrap();
    let (header, payload) = raw_frame(&mut b).await;
    assert!(!header.rsv1);
    assert_eq!(payload, b"short");
    server.send(Message::Ping("p".into())).await.unwrap();
    let (header, _) = raw_frame(&mut b).await;
    assert!(!header.rsv1);
    assert_eq!(
        header.opcode,
        OpCode::Control(tungstenite::protocol::frame::coding::Control::Ping)
    );
}

/// Writes a client frame (masked) as raw bytes.
async fn send_raw(io: &mut DuplexStream, rsv1: bool, fin: bool, opcode: Data, payload: &[u8]) {
    let mask = [1, 2, 3, 4];
    let header = FrameHeader {
        is_final: fin,
        rsv1,
        rsv2: false,
        rsv3: false,
        opcode: OpCode::Data(opcode),
        mask: Some(mask),
    };
    let mut out = BytesMut::new();
    write_header(&header, payload.len(), &mut out);
    let mut body = payload.to_vec();
    unmask(&mut body, mask);
    out.extend_from_slice(&body);
    io.write_all(&out).await.unwrap();
}

async fn server_with_raw_client() -> (Ws, DuplexStream) {
    let (a, b) = tokio::io::duplex(1 << 20);
    (
        socket(Role::Server, Wire::compressed(a, settings(0), full())).await,
        b,
    )
}

#[tokio::test]
async fn a_compressed_message_in_fragments_with_a_ping_between_is_read_whole() {
    let (mut server, mut client) = server_with_raw_client().await;
    let body = text(50);
    let packed = deflate(body.as_bytes(), 6, 15).unwrap();
    let (first, rest) = packed.split_at(packed.len() / 3);
    send_raw(&mut client, true, false, Data::Text, first).await;
    // A control frame may come between the fragments.
    let ping = FrameHeader {
        is_final: true,
        rsv1: false,
        rsv2: false,
        rsv3: false,
        opcode: OpCode::Control(tungstenite::protocol::frame::coding::Control::Ping),
        mask: Some([0; 4]),
    };
    let mut out = BytesMut::new();
    write_header(&ping, 0, &mut out);
    client.write_all(&out).await.unwrap();
    send_raw(&mut client, false, true, Data::Continue, rest).await;
    // And an uncompressed message after it, fragmented too.
    send_raw(&mut client, false, false, Data::Text, b"plain ").await;
    send_raw(&mut client, false, true, Data::Continue, b"text").await;
    assert!(matches!(server.next().await, Some(Ok(Message::Ping(_)))));
    assert_eq!(server.next().await.unwrap().unwrap(), Message::text(body));
    assert_eq!(
        server.next().await.unwrap().unwrap(),
        Message::text("plain text")
    );
}

#[tokio::test]
async fn a_bomb_stops_at_the_limit() {
    let zeros = vec![0u8; 64 * 1024 * 1024];
    let packed = deflate(&zeros, 9, 15).unwrap();
    assert!(packed.len() < 128 * 1024, "{}", packed.len());
    // Whole, and split over frames.
    for pieces in [1, 4] {
        let (mut server, mut client) = server_with_raw_client().await;
        let size = packed.len().div_ceil(pieces);
        let chunks: Vec<Vec<u8>> = packed.chunks(size).map(<[u8]>::to_vec).collect();
        let writer = tokio::spawn(async move {
            for (i, chunk) in chunks.iter().enumerate() {
                let opcode = if i == 0 { Data::Binary } else { Data::Continue };
                send_raw(&mut client, i == 0, i + 1 == chunks.len(), opcode, chunk).await;
            }
            client
        });
        match server.next().await {
            Some(Err(tungstenite::Error::Io(e))) => {
                assert_eq!(Refused::of(&e), Some(Refused::TooBig))
            }
            other => panic!("expected a refusal, got {other:?}"),
        }
        drop(writer.await);
    }
    // Just over the limit is refused, at the limit read.
    let (mut server, mut client) = server_with_raw_client().await;
    send_raw(
        &mut client,
        true,
        true,
        Data::Binary,
        &deflate(&vec![7; LIMIT], 1, 15).unwrap(),
    )
    .await;
    assert_eq!(server.next().await.unwrap().unwrap().len(), LIMIT);
    send_raw(
        &mut client,
        true,
        true,
        Data::Binary,
        &deflate(&vec![7; LIMIT + 1], 1, 15).unwrap(),
    )
    .await;
    assert!(matches!(
        server.next().await,
        Some(Err(tungstenite::Error::Io(_)))
    ));
}

#[tokio::test]
async fn a_compressed_frame_past_the_limit_is_refused_before_it_is_read() {
    let (mut server, mut client) = server_with_raw_client().await;
    let header = FrameHeader {
        is_final: true,
        rsv1: true,
        rsv2: false,
        rsv3: false,
        opcode: OpCode::Data(Data::Binary),
        mask: Some([0; 4]),
    };
    let mut out = Vec::new();
    header.format(1 << 40, &mut out).unwrap();
    client.write_all(&out).await.unwrap();
    match server.next().await {
        Some(Err(tungstenite::Error::Io(e))) => assert_eq!(Refused::of(&e), Some(Refused::TooBig)),
        other => panic!("expected a refusal, got {other:?}"),
    }
}

#[tokio::test]
async fn corrupt_data_is_refused() {
    let (mut server, mut client) = server_with_raw_client().await;
    send_raw(&mut client, true, true, Data::Text, &[0xff; 40]).await;
    match server.next().await {
        Some(Err(tungstenite::Error::Io(e))) => assert_eq!(Refused::of(&e), Some(Refused::Corrupt)),
        other => panic!("expected a refusal, got {other:?}"),
    }
}

#[tokio::test]
async fn a_smaller_server_window_is_honoured() {
    let body = text(2000);
    let packed = deflate(body.as_bytes(), 1, 9).unwrap();
    let mut whole = packed;
    whole.extend_from_slice(&SYNC_TAIL);
    assert_eq!(inflate(&whole, LIMIT).unwrap(), body.as_bytes());
}
