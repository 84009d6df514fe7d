//! Property tests of the JSON codec: whatever a client sends, decoding
//! answers Ok or Err and never panics; what the server encodes is JSON that
//! reads back the same. `PROPTEST_CASES` sets how many inputs each property
//! tries (CI runs more). The last test keeps inputs found by attacking the
//! server, as regressions.

use std::collections::BTreeMap;
use std::sync::Arc;

use bytes::Bytes;
use herald_protocol::json::{
    decode_commands, decode_publication, encode_publication, encode_publication_push, is_valid_json,
};
use herald_protocol::{ClientInfo, Publication};
use proptest::prelude::*;
use serde_json::{json, Value};

/// Any JSON value, nested a few levels.
fn any_json() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        any::<f64>()
            .prop_filter("finite", |f| f.is_finite())
            .prop_map(Value::from),
        ".{0,12}".prop_map(Value::from),
    ];
    leaf.prop_recursive(4, 32, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::from),
            prop::collection::btree_map(".{0,8}", inner, 0..6)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

/// The methods and fields a command may carry, so that generated commands
/// reach the decoders of every request, not only the outer object's.
const METHODS: &[&str] = &[
    "connect",
    "subscribe",
    "unsubscribe",
    "publish",
    "presence",
    "presence_stats",
    "history",
    "ping",
    "send",
    "rpc",
    "refresh",
    "sub_refresh",
];
const FIELDS: &[&str] = &[
    "channel",
    "token",
    "data",
    "recover",
    "offset",
    "epoch",
    "limit",
    "since",
    "reverse",
    "subs",
    "name",
    "version",
    "positioned",
    "recoverable",
    "join_leave",
    "method",
    "params",
    "delta",
    "tf",
];

/// A command with a real method whose fields hold values of any type.
fn command() -> impl Strategy<Value = Value> {
    let fields = prop::collection::btree_map(prop::sample::select(FIELDS), any_json(), 0..5);
    (
        prop::sample::select(METHODS),
        fields,
        prop_oneof![any::<u32>().prop_map(Value::from), any_json()],
    )
        .prop_map(|(method, fields, id)| {
            let request: serde_json::Map<String, Value> = fields
                .into_iter()
                .map(|(k, v)| (k.to_string(), v))
                .collect();
            json!({ "id": id, method: Value::Object(request) })
        })
}

proptest! {
    #[test]
    fn any_bytes_decode_or_fail_cleanly(frame in prop::collection::vec(any::<u8>(), 0..512)) {
        let _ = decode_commands(&frame);
        let _ = is_valid_json(&frame);
    }

    #[test]
    fn any_text_decodes_or_fails_cleanly(frame in ".{0,256}") {
        let _ = decode_commands(frame.as_bytes());
    }

    #[test]
    fn commands_with_fields_of_any_type(commands in prop::collection::vec(command(), 1..4)) {
        let frame = commands.iter().map(Value::to_string).collect::<Vec<_>>().join("\n");
        match decode_commands(frame.as_bytes()) {
            // Every line that decoded is a command of its own.
            Ok(decoded) => prop_assert_eq!(decoded.len(), commands.len()),
            Err(e) => prop_assert!(!e.to_string().is_empty()),
        }
    }

    #[test]
    fn encoded_publications_read_back(
        data in any_json(),
        channel in "[a-z:#$,._-]{1,20}",
        user in ".{0,10}",
        client in ".{0,10}",
        offset in any::<u64>(),
        tags in prop::collection::btree_map(".{0,6}", ".{0,6}", 0..4),
        info in any_json(),
    ) {
        let info = Arc::new(ClientInfo {
            user,
            client,
            conn_info: Some(Bytes::from(info.to_string())),
            chan_info: None,
        });
        let p = Publication::new(Arc::from(channel.as_str()), Bytes::from(data.to_string()), Some(info))
            .with_offset(offset)
            .with_tags(tags.clone());
        // The payload travels as the bytes it came as: compare what the
        // same parser makes of it on both sides.
        let sent: Value = serde_json::from_slice(&p.data).unwrap();
        let push = encode_publication_push(&p);
        let parsed: Value = serde_json::from_slice(&push).expect("a push is JSON");
        prop_assert_eq!(&parsed["push"]["channel"], &json!(channel));
        prop_assert_eq!(&parsed["push"]["pub"]["data"], &sent);
        let encoded = encode_publication(&p);
        let back = decode_publication(Arc::from(channel.as_str()), &encoded).expect("reads back");
        prop_assert_eq!(&back.data, &p.data);
        prop_assert_eq!(back.offset, offset);
        prop_assert_eq!(back.tags, tags);
        prop_assert_eq!(back.info.as_deref().map(|i| i.user.clone()), p.info.as_deref().map(|i| i.user.clone()));
    }
}

/// Inputs that once hurt a server of this kind, kept as regressions: each
/// decodes to an error or to commands, and nothing panics or overflows.
#[test]
fn known_hostile_frames() {
    let deep_array = "[".repeat(100_000);
    let deep_object =
        r#"{"id":1,"publish":{"channel":"c","data":"#.to_string() + &"[".repeat(50_000);
    let huge_number = format!(r#"{{"id":1e{},"ping":{{}}}}"#, "9".repeat(10_000));
    let frames: Vec<Vec<u8>> = vec![
        deep_array.into_bytes(),
        deep_object.into_bytes(),
        huge_number.into_bytes(),
        br#"{"id":4294967296,"ping":{}}"#.to_vec(),
        br#"{"id":-1,"ping":{}}"#.to_vec(),
        br#"{"id":1,"publish":{"channel":"dur:a\u0000b","data":{}}}"#.to_vec(),
        br#"{"id":1,"subscribe":{"channel":"x","offset":18446744073709551616}}"#.to_vec(),
        b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec(),
        b"\xff\xfe{}".to_vec(),
        b"\n\n\n".to_vec(),
        br#"{"id":1,"connect":{"token":"a.b.c","data":"#.to_vec(),
        format!(
            r#"{{"id":1,"publish":{{"channel":"{}","data":1}}}}"#,
            "x".repeat(1 << 20)
        )
        .into_bytes(),
    ];
    for frame in frames {
        let _ = decode_commands(&frame);
    }
    assert!(!is_valid_json(&"[".repeat(100_000).into_bytes()));
    // Tags with every kind of character stay a JSON object.
    let tags: BTreeMap<String, String> =
        [("\"\\\n\u{0}".to_string(), "\u{2028}</script>".to_string())].into();
    let p = Publication::new(Arc::from("c"), Bytes::from_static(b"1"), None).with_tags(tags);
    let push: Value = serde_json::from_slice(&encode_publication_push(&p)).unwrap();
    assert_eq!(
        push["push"]["pub"]["tags"]["\"\\\n\u{0}"],
        "\u{2028}</script>"
    );
}
