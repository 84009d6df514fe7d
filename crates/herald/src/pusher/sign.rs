//! Pusher's signatures: a channel authorization (`key:hex(HMAC-SHA256(
//! secret, "socket_id:channel[:channel_data]"))`), a user sign-in
//! (`"socket_id::user::user_data"`), and a signed HTTP API request
//! (`auth_key`, `auth_timestamp`, `auth_version`, `body_md5`,
//! `auth_signature` over `"METHOD\npath\nsorted query"`).

use crate::config::pusher::PusherApp;
use crate::signing::{hmac_sha256_hex, md5_hex, same};

/// How far a request's `auth_timestamp` may be from now, in seconds.
pub const TIMESTAMP_SKEW: i64 = 600;

/// Whether `auth` (`key:signature`) signs `message` for `app`.
fn signs(app: &PusherApp, auth: &str, message: &str) -> bool {
    let Some((key, signature)) = auth.split_once(':') else {
        return false;
    };
    let expected = hmac_sha256_hex(app.secret.expose().as_bytes(), message.as_bytes());
    key == app.key && same(&expected, signature)
}

/// A subscription's authorization for a private or presence channel.
pub fn channel(
    app: &PusherApp,
    auth: &str,
    socket_id: &str,
    channel: &str,
    channel_data: Option<&str>,
) -> bool {
    let message = match channel_data {
        Some(data) => format!("{socket_id}:{channel}:{data}"),
        None => format!("{socket_id}:{channel}"),
    };
    signs(app, auth, &message)
}

/// A user sign-in's authorization.
pub fn user(app: &PusherApp, auth: &str, socket_id: &str, user_data: &str) -> bool {
    signs(app, auth, &format!("{socket_id}::user::{user_data}"))
}

/// Checks a signed HTTP API request: `params` are its decoded query
/// parameters, `now` the time in Unix seconds. The error says why not.
pub fn request(
    app: &PusherApp,
    method: &str,
    path: &str,
    params: &[(String, String)],
    body: &[u8],
    now: i64,
) -> Result<(), &'static str> {
    let get = |name: &str| {
        params
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    };
    if get("auth_key") != Some(app.key.as_str()) {
        return Err("unknown auth_key");
    }
    if get("auth_version").is_some_and(|v| v != "1.0") {
        return Err("auth_version must be 1.0");
    }
    let timestamp: i64 = get("auth_timestamp")
        .and_then(|t| t.parse().ok())
        .ok_or("auth_timestamp is missing")?;
    if now.abs_diff(timestamp) > TIMESTAMP_SKEW.unsigned_abs() {
        return Err("auth_timestamp is more than 600 s away from the server's time");
    }
    if !body.is_empty() && get("body_md5").is_none_or(|m| !same(&md5_hex(body), m)) {
        return Err("body_md5 does not match the body");
    }
    let signature = get("auth_signature").ok_or("auth_signature is missing")?;
    let mut signed: Vec<(String, &str)> = params
        .iter()
        .filter(|(k, _)| !k.eq_ignore_ascii_case("auth_signature"))
        .map(|(k, v)| (k.to_ascii_lowercase(), v.as_str()))
        .collect();
    signed.sort();
    let query: Vec<String> = signed.iter().map(|(k, v)| format!("{k}={v}")).collect();
    let message = format!("{method}\n{path}\n{}", query.join("&"));
    let expected = hmac_sha256_hex(app.secret.expose().as_bytes(), message.as_bytes());
    if !same(&expected, signature) {
        return Err("auth_signature does not match");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn app() -> PusherApp {
        PusherApp {
            id: "1".into(),
            key: "key".into(),
            secret: serde_json::from_str("\"secret\"").unwrap(),
            namespace: "app".into(),
            ..Default::default()
        }
    }

    fn auth(message: &str) -> String {
        format!("key:{}", hmac_sha256_hex(b"secret", message.as_bytes()))
    }

    #[test]
    fn channel_and_user_authorizations() {
        let a = app();
        let good = auth("1.2:private-x");
        assert!(channel(&a, &good, "1.2", "private-x", None));
        assert!(
            !channel(&a, &good, "1.3", "private-x", None),
            "another socket"
        );
        assert!(
            !channel(&a, &good, "1.2", "private-y", None),
            "another channel"
        );
        assert!(!channel(
            &a,
            &good.replace("key:", "other:"),
            "1.2",
            "private-x",
            None
        ));
        assert!(!channel(&a, "garbage", "1.2", "private-x", None));
        let data = r#"{"user_id":"7"}"#;
        let presence = auth(&format!("1.2:presence-r:{data}"));
        assert!(channel(&a, &presence, "1.2", "presence-r", Some(data)));
        assert!(!channel(
            &a,
            &presence,
            "1.2",
            "presence-r",
            Some(r#"{"user_id":"8"}"#)
        ));
        let user_data = r#"{"id":"7"}"#;
        assert!(user(
            &a,
            &auth(&format!("1.2::user::{user_data}")),
            "1.2",
            user_data
        ));
    }

    fn signed(method: &str, path: &str, body: &[u8], at: i64) -> Vec<(String, String)> {
        let mut params = vec![
            ("auth_key".to_string(), "key".to_string()),
            ("auth_timestamp".into(), at.to_string()),
            ("auth_version".into(), "1.0".into()),
        ];
        if !body.is_empty() {
            params.push(("body_md5".into(), md5_hex(body)));
        }
        params.sort();
        let query: Vec<String> = params.iter().map(|(k, v)| format!("{k}={v}")).collect();
        let message = format!("{method}\n{path}\n{}", query.join("&"));
        params.push((
            "auth_signature".into(),
            hmac_sha256_hex(b"secret", message.as_bytes()),
        ));
        params
    }

    #[test]
    fn requests_are_checked_in_full() {
        let a = app();
        let body = br#"{"name":"e","channel":"c","data":"{}"}"#;
        let params = signed("POST", "/apps/1/events", body, 1000);
        assert_eq!(
            request(&a, "POST", "/apps/1/events", &params, body, 1000),
            Ok(())
        );
        // Within ±600 s, and not beyond.
        assert_eq!(
            request(&a, "POST", "/apps/1/events", &params, body, 1600),
            Ok(())
        );
        assert!(request(&a, "POST", "/apps/1/events", &params, body, 1601).is_err());
        assert!(request(&a, "POST", "/apps/1/events", &params, body, 399).is_err());
        // Another body, path or method breaks it.
        assert!(request(&a, "POST", "/apps/1/events", &params, b"{}", 1000).is_err());
        assert!(request(&a, "POST", "/apps/2/events", &params, body, 1000).is_err());
        assert!(request(&a, "GET", "/apps/1/events", &params, body, 1000).is_err());
        // A parameter added after signing breaks it too.
        let mut more = params.clone();
        more.push(("info".into(), "user_count".into()));
        assert!(request(&a, "POST", "/apps/1/events", &more, body, 1000).is_err());
        let get = signed("GET", "/apps/1/channels", b"", 1000);
        assert_eq!(
            request(&a, "GET", "/apps/1/channels", &get, b"", 1000),
            Ok(())
        );
        let wrong_key: Vec<_> = get
            .iter()
            .map(|(k, v)| {
                (
                    k.clone(),
                    if k == "auth_key" {
                        "x".into()
                    } else {
                        v.clone()
                    },
                )
            })
            .collect();
        assert!(request(&a, "GET", "/apps/1/channels", &wrong_key, b"", 1000).is_err());
    }
}
