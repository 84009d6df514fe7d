use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream};
use tokio_tungstenite::tungstenite::protocol::frame::coding::{Control, Data, OpCode};
use tokio_tungstenite::tungstenite::protocol::frame::FrameHeader;
use tokio_tungstenite::tungstenite::protocol::{Role, WebSocketConfig};
use tokio_tungstenite::tungstenite::{self, Message};
use tokio_tungstenite::WebSocketStream;

use std::io::Cursor;

use bytes::BytesMut;
use flate2::{Decompress, FlushDecompress};

use super::frames::{unmask, write_header, Deflate, MAX_HEADER};
use super::zlib::{deflate, inflate, SYNC_TAIL};
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

fn header(is_final: bool, rsv1: bool, opcode: OpCode, mask: Option<[u8; 4]>) -> FrameHeader {
    FrameHeader {
        is_final,
        rsv1,
        rsv2: false,
        rsv3: false,
        opcode,
        mask,
    }
}

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
    assert_eq!(header.opcode, OpCode::Control(Control::Ping));
}

/// Writes a client frame (masked) as raw bytes.
async fn send_raw(
    io: &mut (impl tokio::io::AsyncWrite + Unpin),
    rsv1: bool,
    fin: bool,
    opcode: Data,
    payload: &[u8],
) {
    let mask = [1, 2, 3, 4];
    let header = header(fin, rsv1, OpCode::Data(opcode), Some(mask));
    let mut out = BytesMut::new();
    write_header(&header, payload.len(), &mut out);
    let mut body = payload.to_vec();
    unmask(&mut body, mask);
    out.extend_from_slice(&body);
    io.write_all(&out).await.unwrap();
}

async fn server_with_raw_client() -> (Ws, DuplexStream) {
    server_with_raw_client_over(1 << 20, settings(0)).await
}

/// A compressing server and the raw end of its stream; `pipe` bytes fit in
/// the stream at once (small: every read is a few bytes).
async fn server_with_raw_client_over(pipe: usize, settings: Settings) -> (Ws, DuplexStream) {
    let (a, b) = tokio::io::duplex(pipe);
    (
        socket(Role::Server, Wire::compressed(a, settings, full())).await,
        b,
    )
}

#[tokio::test]
async fn a_compressed_message_in_fragments_with_a_ping_between_is_read_whole() {
    // Three bytes at a time: headers and payloads split across reads.
    let (mut server, client) = server_with_raw_client_over(3, settings(0)).await;
    let (mut answers, mut client) = tokio::io::split(client);
    tokio::spawn(async move { tokio::io::copy(&mut answers, &mut tokio::io::sink()).await });
    let body = text(50);
    let packed = deflate(body.as_bytes(), 6, 15).unwrap();
    let writer = tokio::spawn(async move {
        let (first, rest) = packed.split_at(packed.len() / 3);
        send_raw(&mut client, true, false, Data::Text, first).await;
        // A control frame may come between the fragments.
        let ping = header(true, false, OpCode::Control(Control::Ping), Some([0; 4]));
        let mut out = BytesMut::new();
        write_header(&ping, 0, &mut out);
        client.write_all(&out).await.unwrap();
        send_raw(&mut client, false, true, Data::Continue, rest).await;
        // And an uncompressed message after it, fragmented too, and one
        // larger than many reads.
        send_raw(&mut client, false, false, Data::Text, b"plain ").await;
        send_raw(&mut client, false, true, Data::Continue, b"text").await;
        send_raw(&mut client, false, true, Data::Binary, &[9; 3000]).await;
        client
    });
    assert!(matches!(server.next().await, Some(Ok(Message::Ping(_)))));
    assert_eq!(server.next().await.unwrap().unwrap(), Message::text(body));
    assert_eq!(
        server.next().await.unwrap().unwrap(),
        Message::text("plain text")
    );
    assert_eq!(
        server.next().await.unwrap().unwrap(),
        Message::binary(vec![9; 3000])
    );
    drop(writer.await.unwrap());
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
    match server.next().await {
        Some(Err(tungstenite::Error::Io(e))) => assert_eq!(Refused::of(&e), Some(Refused::TooBig)),
        other => panic!("expected a refusal, got {other:?}"),
    }
}

#[tokio::test]
async fn a_compressed_frame_past_the_limit_is_refused_before_it_is_read() {
    let (mut server, mut client) = server_with_raw_client().await;
    let header = header(true, true, OpCode::Data(Data::Binary), Some([0; 4]));
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

/// Bytes that repeat only from far back: compressed with a full window
/// they refer 4 KiB back, which a 512-byte window cannot read.
fn far_repeats() -> Vec<u8> {
    let block: Vec<u8> = (0u32..4096)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    [block.clone(), block].concat()
}

fn inflate_with_window(packed: &[u8], bits: u8) -> Result<Vec<u8>, flate2::DecompressError> {
    let mut d = Decompress::new_with_window_bits(false, bits);
    let mut input = packed.to_vec();
    input.extend_from_slice(&SYNC_TAIL);
    // Small steps: what lies further back than this step's output must
    // come from the window.
    let mut out = Vec::new();
    loop {
        let mut step = [0u8; 256];
        let before = (d.total_in(), d.total_out());
        d.decompress(
            &input[d.total_in() as usize..],
            &mut step,
            FlushDecompress::Sync,
        )?;
        out.extend_from_slice(&step[..(d.total_out() - before.1) as usize]);
        if (d.total_in(), d.total_out()) == before {
            return Ok(out);
        }
    }
}

#[test]
fn a_smaller_server_window_is_honoured() {
    let data = far_repeats();
    assert!(
        inflate_with_window(&deflate(&data, 1, 15).unwrap(), 9).is_err(),
        "a full window reaches back past 512 bytes"
    );
    let packed = deflate(&data, 1, 9).unwrap();
    assert_eq!(inflate_with_window(&packed, 9).unwrap(), data);
}

#[tokio::test]
async fn the_agreed_window_reaches_the_wire() {
    let agreed = agree(["permessage-deflate; server_max_window_bits=9"]).unwrap();
    let (a, mut b) = tokio::io::duplex(1 << 20);
    let mut server = socket(Role::Server, Wire::compressed(a, settings(0), agreed)).await;
    server.send(Message::binary(far_repeats())).await.unwrap();
    let (header, payload) = raw_frame(&mut b).await;
    assert!(header.rsv1);
    assert_eq!(inflate_with_window(&payload, 9).unwrap(), far_repeats());
}

#[tokio::test]
async fn a_size_limit_under_256_bytes_holds() {
    let tiny = Settings {
        read_limit: 100,
        ..settings(0)
    };
    let (mut server, mut client) = server_with_raw_client_over(1 << 16, tiny).await;
    send_raw(
        &mut client,
        true,
        true,
        Data::Binary,
        &deflate(&[1; 100], 1, 15).unwrap(),
    )
    .await;
    assert_eq!(server.next().await.unwrap().unwrap().len(), 100);
    send_raw(
        &mut client,
        true,
        true,
        Data::Binary,
        &deflate(&[1; 101], 1, 15).unwrap(),
    )
    .await;
    match server.next().await {
        Some(Err(tungstenite::Error::Io(e))) => assert_eq!(Refused::of(&e), Some(Refused::TooBig)),
        other => panic!("expected a refusal, got {other:?}"),
    }
}

#[test]
fn many_compressed_messages_in_one_read_are_inflated_one_at_a_time() {
    let mut d = Deflate::new(settings(0), full());
    let one = deflate(&vec![0; LIMIT], 9, 15).unwrap();
    for _ in 0..50 {
        let mut frame = BytesMut::new();
        let header = header(true, true, OpCode::Data(Data::Binary), Some([0; 4]));
        write_header(&header, one.len(), &mut frame);
        frame.extend_from_slice(&one);
        d.raw_in.unsplit(frame);
    }
    let mut messages = 0;
    loop {
        d.take_in().unwrap();
        if d.ready_in.is_empty() {
            break;
        }
        assert!(
            d.ready_in.len() <= LIMIT + MAX_HEADER,
            "{}",
            d.ready_in.len()
        );
        d.ready_in.clear();
        messages += 1;
    }
    assert_eq!(messages, 50);
}

#[tokio::test]
async fn frames_out_of_place_in_a_compressed_message_are_refused() {
    let packed = deflate(text(20).as_bytes(), 1, 15).unwrap();
    let (first, rest) = packed.split_at(10);
    // A new message before the compressed one ended.
    let (mut server, mut client) = server_with_raw_client().await;
    send_raw(&mut client, true, false, Data::Text, first).await;
    send_raw(&mut client, false, true, Data::Text, b"new").await;
    match server.next().await {
        Some(Err(tungstenite::Error::Io(e))) => {
            assert_eq!(Refused::of(&e), Some(Refused::Protocol))
        }
        other => panic!("expected a refusal, got {other:?}"),
    }
    // A continuation masked unlike the first fragment.
    let (mut server, mut client) = server_with_raw_client().await;
    send_raw(&mut client, true, false, Data::Text, first).await;
    let header = header(true, false, OpCode::Data(Data::Continue), None);
    let mut out = BytesMut::new();
    write_header(&header, rest.len(), &mut out);
    out.extend_from_slice(rest);
    client.write_all(&out).await.unwrap();
    match server.next().await {
        Some(Err(tungstenite::Error::Io(e))) => {
            assert_eq!(Refused::of(&e), Some(Refused::Protocol))
        }
        other => panic!("expected a refusal, got {other:?}"),
    }
    // RSV2 is no compression this side knows: the library refuses it.
    let (mut server, mut client) = server_with_raw_client().await;
    let header = FrameHeader {
        is_final: true,
        rsv1: true,
        rsv2: true,
        rsv3: false,
        opcode: OpCode::Data(Data::Text),
        mask: Some([0; 4]),
    };
    let mut out = BytesMut::new();
    write_header(&header, packed.len(), &mut out);
    out.extend_from_slice(&packed);
    client.write_all(&out).await.unwrap();
    assert!(matches!(
        server.next().await,
        Some(Err(tungstenite::Error::Protocol(_)))
    ));
}

#[tokio::test]
async fn a_writer_waits_for_a_client_that_does_not_read_and_loses_nothing() {
    let (a, mut b) = tokio::io::duplex(1024);
    let mut server = socket(Role::Server, Wire::compressed(a, settings(0), full())).await;
    // Messages that barely compress: what is queued grows past the high
    // water.
    let message = |n: u32| -> Vec<u8> {
        (0..2000u32)
            .map(|i| (i.wrapping_add(n * 7919).wrapping_mul(2_654_435_761) >> 11) as u8)
            .collect()
    };
    let mut sent = 0;
    let blocked = tokio::time::timeout(std::time::Duration::from_millis(300), async {
        loop {
            server.feed(Message::binary(message(sent))).await.unwrap();
            sent += 1;
        }
    })
    .await;
    assert!(blocked.is_err(), "the writer waits");
    assert!(sent > 0);
    let reader = tokio::spawn(async move {
        let mut got = Vec::new();
        for _ in 0..sent {
            let (header, mut payload) = raw_frame(&mut b).await;
            if header.rsv1 {
                payload.extend_from_slice(&SYNC_TAIL);
                payload = inflate(&payload, LIMIT).unwrap();
            }
            got.push(payload);
        }
        got
    });
    // Once the client reads, everything fed goes out (the feed cut short
    // by the timeout may or may not have been queued), whole and in order.
    server.flush().await.unwrap();
    let got = reader.await.unwrap();
    for (n, payload) in got.iter().enumerate() {
        assert_eq!(payload, &message(n as u32));
    }
}

#[tokio::test]
async fn a_client_compresses_from_the_frame_after_the_answer() {
    // The answer and a compressed frame arrive in one read.
    let (a, mut server_end) = tokio::io::duplex(1 << 16);
    let client = tokio::spawn(async move {
        let wire = Wire::client(a, settings(0));
        let request = "ws://127.0.0.1/x";
        let (mut ws, _) = tokio_tungstenite::client_async(request, wire)
            .await
            .unwrap();
        assert!(ws.get_ref().is_compressed());
        ws.next().await.unwrap().unwrap()
    });
    let mut request = Vec::new();
    while !request.ends_with(b"\r\n\r\n") {
        request.push(server_end.read_u8().await.unwrap());
    }
    let key = String::from_utf8_lossy(&request)
        .lines()
        .find_map(|l| l.strip_prefix("Sec-WebSocket-Key: ").map(str::to_string))
        .unwrap();
    let accept = tungstenite::handshake::derive_accept_key(key.trim().as_bytes());
    let mut answer = format!(
        "HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
         Sec-WebSocket-Accept: {accept}\r\nSec-WebSocket-Extensions: {}\r\n\r\n",
        full().answer()
    )
    .into_bytes();
    let body = text(40);
    let packed = deflate(body.as_bytes(), 1, 15).unwrap();
    let header = header(true, true, OpCode::Data(Data::Text), None);
    let mut frame = BytesMut::new();
    write_header(&header, packed.len(), &mut frame);
    frame.extend_from_slice(&packed);
    answer.extend_from_slice(&frame);
    server_end.write_all(&answer).await.unwrap();
    assert_eq!(client.await.unwrap(), Message::text(body));
}

#[test]
fn remembered_messages_come_back_as_compressed_and_levels_stay_apart() {
    use super::zlib::deflated;
    let input = text(300);
    let (fast, small) = (
        deflate(input.as_bytes(), 1, 15).unwrap(),
        deflate(input.as_bytes(), 9, 15).unwrap(),
    );
    assert_ne!(fast, small, "the levels differ on this input");
    for _ in 0..2 {
        let got = deflated(input.as_bytes(), 1, 15, <[u8]>::to_vec).unwrap();
        assert_eq!(got, fast);
    }
    let got = deflated(input.as_bytes(), 9, 15, <[u8]>::to_vec).unwrap();
    assert_eq!(got, small, "not level 1's form from memory");
    // Pushed out by newer messages, it is compressed again, the same.
    for n in 0..5 {
        deflated(text(n).as_bytes(), 1, 15, |_| ()).unwrap();
    }
    assert_eq!(
        deflated(input.as_bytes(), 1, 15, <[u8]>::to_vec).unwrap(),
        fast
    );
}
