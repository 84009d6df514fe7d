//! The proxy messages' `data`, `info` and `meta` fields in JSON: embedded
//! JSON values, as Centrifugo's HTTP proxies send and expect them, held as
//! their bytes (as the Protobuf `bytes` fields of the same messages).

use serde::de::Error as _;
use serde::ser::Error as _;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_json::value::RawValue;

pub fn serialize<S: Serializer>(bytes: &[u8], s: S) -> Result<S::Ok, S::Error> {
    let text = std::str::from_utf8(bytes).map_err(S::Error::custom)?;
    let raw: &RawValue = serde_json::from_str(text).map_err(S::Error::custom)?;
    raw.serialize(s)
}

/// A JSON `null` is no value at all.
pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
    let raw = Box::<RawValue>::deserialize(d).map_err(D::Error::custom)?;
    match raw.get() {
        "null" => Ok(Vec::new()),
        text => Ok(text.as_bytes().to_vec()),
    }
}

#[cfg(test)]
mod tests {
    use crate::proxy::pb;

    #[test]
    fn payloads_are_embedded_json_both_ways() {
        let req = pb::PublishRequest {
            channel: "chat:a".into(),
            data: br#"{"text":"hi"}"#.to_vec(),
            ..Default::default()
        };
        let json = serde_json::to_value(&req).unwrap();
        assert_eq!(json["data"], serde_json::json!({"text": "hi"}));
        assert!(json.get("meta").is_none(), "empty payloads are left out");
        assert!(json.get("b64data").is_none());

        let answer: pb::PublishResponse = serde_json::from_str(
            r#"{"result":{"data":{"text":"HI"},"skip_history":true},"extra":1}"#,
        )
        .unwrap();
        let result = answer.result.unwrap();
        assert_eq!(result.data, br#"{"text":"HI"}"#);
        assert!(result.skip_history);

        let none: pb::SubscribeResponse = serde_json::from_str(
            r#"{"result":{"info":null,"override":{"presence":{"value":true}}}}"#,
        )
        .unwrap();
        let result = none.result.unwrap();
        assert!(result.info.is_empty());
        assert!(result.r#override.unwrap().presence.unwrap().value);
    }
}
