//! The Pusher protocol as tests speak it: a socket's next message with its
//! data parsed, channel authorizations, and signed HTTP API URLs.

use serde_json::Value;

use crate::{Event, Ws};

/// The next message of a Pusher socket as `(event, channel, data)`, the
/// data string parsed when it holds JSON.
pub async fn pusher_message(ws: &mut Ws) -> (String, Option<String>, Value) {
    let m = match ws.read().await {
        Event::Msg(m) => m,
        Event::Closed(c) => panic!("closed: {c:?}"),
    };
    let event = m["event"]
        .as_str()
        .unwrap_or_else(|| panic!("not a Pusher message: {m}"))
        .to_string();
    let channel = m["channel"].as_str().map(str::to_string);
    let data = match &m["data"] {
        Value::String(s) => serde_json::from_str(s).unwrap_or(Value::String(s.clone())),
        other => other.clone(),
    };
    (event, channel, data)
}

/// `key:signature` of `message` (a channel authorization).
pub fn pusher_auth(key: &str, secret: &str, message: &str) -> String {
    format!(
        "{key}:{}",
        herald::signing::hmac_sha256_hex(secret.as_bytes(), message.as_bytes())
    )
}

/// The path and query of a Pusher HTTP API request signed at `timestamp`.
pub fn pusher_signed(
    method: &str,
    path: &str,
    body: &str,
    key: &str,
    secret: &str,
    timestamp: i64,
) -> String {
    pusher_signed_with(method, path, body, key, secret, timestamp, &[])
}

/// [`pusher_signed`] with more query parameters (`info`,
/// `filter_by_prefix`), signed too.
pub fn pusher_signed_with(
    method: &str,
    path: &str,
    body: &str,
    key: &str,
    secret: &str,
    timestamp: i64,
    more: &[(&str, &str)],
) -> String {
    let mut params = vec![
        ("auth_key".to_string(), key.to_string()),
        ("auth_timestamp".into(), timestamp.to_string()),
        ("auth_version".into(), "1.0".into()),
    ];
    if !body.is_empty() {
        params.push(("body_md5".into(), herald::signing::md5_hex(body.as_bytes())));
    }
    params.extend(more.iter().map(|(k, v)| (k.to_string(), v.to_string())));
    params.sort();
    let query: Vec<String> = params.iter().map(|(k, v)| format!("{k}={v}")).collect();
    let query = query.join("&");
    let signature = herald::signing::hmac_sha256_hex(
        secret.as_bytes(),
        format!("{method}\n{path}\n{query}").as_bytes(),
    );
    format!("{path}?{query}&auth_signature={signature}")
}
