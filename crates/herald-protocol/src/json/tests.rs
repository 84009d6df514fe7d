use std::sync::Arc;

use super::*;
use crate::command::Method;

fn parse(s: &[u8]) -> serde_json::Value {
    serde_json::from_slice(s).expect("valid JSON")
}

#[test]
fn decodes_a_batch_and_ignores_unknown_fields() {
    let frame = b"{\"id\":1,\"connect\":{\"token\":\"t\",\"name\":\"js\"}}\n{\"id\":2,\"subscribe\":{\"channel\":\"a:b\",\"flag\":1}}\n\n";
    let cmds = decode_commands(frame).unwrap();
    assert_eq!(cmds.len(), 2);
    let mut it = cmds.into_iter().map(Command::into_method);
    match it.next().unwrap() {
        (1, Method::Connect(c)) => assert_eq!((c.token.as_str(), c.name.as_str()), ("t", "js")),
        other => panic!("{other:?}"),
    }
    match it.next().unwrap() {
        (2, Method::Subscribe(s)) => assert_eq!(s.channel, "a:b"),
        other => panic!("{other:?}"),
    }
}

#[test]
fn empty_command_is_a_pong() {
    let cmds = decode_commands(b"{}").unwrap();
    assert!(matches!(
        cmds.into_iter().next().unwrap().into_method(),
        (0, Method::Empty)
    ));
}

#[test]
fn rejects_malformed_and_non_utf8() {
    assert!(matches!(
        decode_commands(b"{\"id\":1,"),
        Err(DecodeError::Malformed(_))
    ));
    assert!(matches!(
        decode_commands(b"[1,2]"),
        Err(DecodeError::Malformed(_))
    ));
    assert!(matches!(
        decode_commands(&[0xff, 0xfe]),
        Err(DecodeError::NotUtf8)
    ));
}

#[test]
fn publication_push_embeds_raw_data_and_skips_zero_values() {
    let p = Publication::new(
        Arc::from("chat:\"x\""),
        Bytes::from_static(b"{\"a\":[1,2]}"),
        None,
    );
    assert_eq!(
        encode_publication_push(&p).as_ref(),
        br#"{"push":{"channel":"chat:\"x\"","pub":{"data":{"a":[1,2]}}}}"#
    );
    let info = Arc::new(ClientInfo {
        user: "42".into(),
        client: "c1".into(),
        conn_info: Some(Bytes::from_static(b"{\"n\":1}")),
        chan_info: None,
    });
    let p = Publication::new(Arc::from("c"), Bytes::from_static(b"1"), Some(info)).with_offset(7);
    let v = parse(&encode_publication_push(&p));
    assert_eq!(v["push"]["pub"]["info"]["user"], "42");
    assert_eq!(v["push"]["pub"]["info"]["conn_info"]["n"], 1);
    assert_eq!(v["push"]["pub"]["offset"], 7);
}

#[test]
fn connect_reply_shape() {
    let r = ConnectResult {
        client: "abc".into(),
        version: "0.1.0".into(),
        ping: 25,
        pong: true,
        expires: true,
        ttl: 60,
        subs: vec![("news".into(), SubscribeResult::default())],
        ..Default::default()
    };
    let v = parse(&encode_reply(1, &ReplyBody::Connect(r)));
    assert_eq!(
        v,
        serde_json::json!({"id":1,"connect":{"client":"abc","version":"0.1.0","expires":true,"ttl":60,
            "subs":{"news":{}},"ping":25,"pong":true}})
    );
}

#[test]
fn subscribe_reply_lists_publications() {
    let p = Arc::new(
        Publication::new(Arc::from("c"), Bytes::from_static(b"{\"x\":1}"), None).with_offset(3),
    );
    let r = SubscribeResult {
        recoverable: true,
        epoch: "e".into(),
        offset: 3,
        recovered: true,
        was_recovering: true,
        publications: vec![p.clone(), p],
        ..Default::default()
    };
    let v = parse(&encode_reply(9, &ReplyBody::Subscribe(r)));
    assert_eq!(
        v["subscribe"]["publications"][1],
        serde_json::json!({"data":{"x":1},"offset":3})
    );
    assert_eq!(v["subscribe"]["recovered"], true);
}

#[test]
fn error_and_pushes() {
    let v = parse(&encode_error(4, &ProtocolError::PERMISSION_DENIED));
    assert_eq!(
        v,
        serde_json::json!({"id":4,"error":{"code":103,"message":"permission denied"}})
    );
    let v = parse(&encode_error(4, &ProtocolError::INTERNAL));
    assert_eq!(v["error"]["temporary"], true);
    let v = parse(&encode_push(&Push::Unsubscribe {
        channel: "c".into(),
        code: 2000,
        reason: "server unsubscribe".into(),
    }));
    assert_eq!(
        v,
        serde_json::json!({"push":{"channel":"c","unsubscribe":{"code":2000,"reason":"server unsubscribe"}}})
    );
    let v = parse(&encode_push(&Push::Message {
        data: Bytes::from_static(b"\"hi\""),
    }));
    assert_eq!(v, serde_json::json!({"push":{"message":{"data":"hi"}}}));
    let v = parse(&encode_push(&Push::Subscribe {
        channel: "s".into(),
        result: SubscribeResult::default(),
    }));
    assert_eq!(
        v,
        serde_json::json!({"push":{"channel":"s","subscribe":{}}})
    );
}

#[test]
fn validates_json_payloads() {
    assert!(is_valid_json(b"{\"a\":1}"));
    assert!(is_valid_json(b" 12 "));
    assert!(!is_valid_json(b"{\"a\":"));
    assert!(!is_valid_json(b"{} {}"));
    assert!(!is_valid_json(b"\"\xff\""), "strings must be UTF-8");
}

#[test]
fn publication_round_trips_through_its_object() {
    let info = ClientInfo {
        user: "u1".into(),
        client: "c1".into(),
        conn_info: Some(Bytes::from_static(br#"{"name":"Ann"}"#)),
        chan_info: None,
    };
    let mut tags = std::collections::BTreeMap::new();
    tags.insert("k".to_string(), "v \"q\"".to_string());
    let p = Publication::new(
        Arc::from("chat:1"),
        Bytes::from_static(br#"{"text":"hi \u00e9"}"#),
        Some(Arc::new(info.clone())),
    )
    .with_offset(42)
    .with_tags(tags.clone());
    let back = decode_publication(Arc::from("chat:1"), &encode_publication(&p)).unwrap();
    assert_eq!(&*back.data, &*p.data);
    assert_eq!(back.offset, 42);
    assert_eq!(back.tags, tags);
    assert_eq!(back.info.as_deref(), Some(&info));
    assert_eq!(encode_publication_push(&back), encode_publication_push(&p));

    let plain = Publication::new(Arc::from("c"), Bytes::from_static(b"1"), None);
    let back = decode_publication(Arc::from("c"), &encode_publication(&plain)).unwrap();
    assert_eq!((back.offset, back.info.is_none()), (0, true));
    assert!(decode_publication(Arc::from("c"), b"{\"offset\":1}").is_err());
    assert_eq!(
        decode_client_info(&encode_client_info(&info)).unwrap(),
        info
    );
}

#[test]
fn presence_push_shape() {
    let info = Arc::new(ClientInfo {
        user: "u".into(),
        client: "c".into(),
        conn_info: None,
        chan_info: Some(Bytes::from_static(b"[1]")),
    });
    let join = PresenceEvent::new(Arc::from("room"), info.clone(), true);
    assert_eq!(
        &encode_presence_push(&join)[..],
        br#"{"push":{"channel":"room","join":{"info":{"user":"u","client":"c","chan_info":[1]}}}}"#
    );
    let leave = PresenceEvent::new(Arc::from("room"), info, false);
    assert_eq!(
        parse(&encode_presence_push(&leave))["push"]["leave"]["info"]["client"],
        "c"
    );
}

/// A payload written across lines (as a server API body may be) goes out on
/// one line: a JSON client splits frames at line breaks.
#[test]
fn payloads_with_line_breaks_are_written_on_one_line() {
    let info = Arc::new(ClientInfo {
        user: "u".into(),
        client: "c".into(),
        conn_info: Some(Bytes::from_static(b"{\r\n  \"n\": 1\r\n}")),
        chan_info: None,
    });
    let p = Publication::new(
        Arc::from("ch"),
        Bytes::from_static(b"{\n  \"text\": \"a\\nb\",\n  \"list\": [1,\n 2]\n}"),
        Some(info),
    );
    let frame = encode_publication_push(&p);
    assert!(!frame.contains(&b'\n') && !frame.contains(&b'\r'));
    let v = parse(&frame);
    assert_eq!(v["push"]["pub"]["data"]["text"], "a\nb", "escapes kept");
    assert_eq!(v["push"]["pub"]["data"]["list"][1], 2);
    assert_eq!(v["push"]["pub"]["info"]["conn_info"]["n"], 1);
}
