//! The admin UI's API: a login refused for a wrong password and limited
//! per address, sessions that expire and that no other token passes for,
//! the server API behind a session, this node's connections, a channel's
//! live view, and where the UI is served.

use std::time::Duration;

use reqwest::StatusCode;
use serde_json::{json, Value};

use herald_testkit::*;

const PASSWORD: &str = "admin-password";

fn admin(extra: Value) -> Value {
    let mut admin = json!({"enabled": true, "password": PASSWORD, "secret": "admin-secret"});
    merge(&mut admin, extra);
    json!({ "admin": admin })
}

async fn login(s: &TestServer, password: &str) -> (StatusCode, Value) {
    let r = reqwest::Client::new()
        .post(s.http("/admin/auth"))
        .json(&json!({ "password": password }))
        .send()
        .await
        .expect("reachable");
    (r.status(), r.json().await.expect("JSON"))
}

async fn call(s: &TestServer, session: &str, method: &str, params: Value) -> (StatusCode, Value) {
    let r = reqwest::Client::new()
        .post(s.http(&format!("/admin/api/{method}")))
        .header("Authorization", format!("token {session}"))
        .json(&params)
        .send()
        .await
        .expect("reachable");
    (r.status(), r.json().await.expect("JSON"))
}

/// A session, waiting out the login limit (one a second) if need be.
async fn session(s: &TestServer) -> String {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let (status, body) = login(s, PASSWORD).await;
        if status == StatusCode::OK {
            return body["token"].as_str().unwrap().to_string();
        }
        assert!(tokio::time::Instant::now() < deadline, "no session: {body}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test]
async fn a_login_hands_out_a_session_the_admin_api_takes() {
    let s = TestServer::start(admin(json!({}))).await;
    let (status, body) = login(&s, "wrong").await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{body}");
    assert_eq!(body["error"], "wrong password");
    // At most one attempt a second from an address: the next is refused
    // before its password is even looked at.
    let (status, body) = login(&s, PASSWORD).await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS, "{body}");
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let (status, body) = login(&s, PASSWORD).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let token = body["token"].as_str().unwrap().to_string();
    assert_eq!(body["expires_in"], 12 * 3600);

    let (status, body) = call(&s, &token, "info", json!({})).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let node = &body["result"]["nodes"][0];
    assert_eq!(node["num_publications"], 0, "{body}");
    s.api("publish", json!({"channel": "chat:x", "data": {}}))
        .await;
    let (_, body) = call(&s, &token, "info", json!({})).await;
    assert_eq!(body["result"]["nodes"][0]["num_publications"], 1, "{body}");

    // Errors of the server API come back as its errors.
    let (status, body) = call(&s, &token, "publish", json!({"channel": ""})).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["error"]["code"], 107, "{body}");
    let (status, _) = call(&s, &token, "no_such_method", json!({})).await;
    assert_eq!(status, StatusCode::NOT_FOUND);

    // Without a session, with a made-up one, or with a client's token
    // signed by the same secret: refused.
    for bad in ["", "x.y.z", &token_signed_with("admin-secret")] {
        let (status, _) = call(&s, bad, "info", json!({})).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{bad}");
    }
    s.stop().await;
}

/// A connection token (no admin audience) signed with `secret`.
fn token_signed_with(secret: &str) -> String {
    let claims = json!({"sub": "admin", "exp": now() + 3600});
    herald::auth::sign_hs256(&claims, secret).unwrap()
}

#[tokio::test]
async fn a_session_ends_with_its_time() {
    let s = TestServer::start(admin(json!({"session_ttl": "1s"}))).await;
    let token = session(&s).await;
    assert_eq!(call(&s, &token, "info", json!({})).await.0, StatusCode::OK);
    tokio::time::sleep(Duration::from_millis(2100)).await;
    assert_eq!(
        call(&s, &token, "info", json!({})).await.0,
        StatusCode::UNAUTHORIZED
    );
    s.stop().await;
}

#[tokio::test]
async fn connections_lists_each_with_transport_and_channels() {
    let s = TestServer::start(admin(json!({}))).await;
    let mut ws = s.client("alice").await;
    let r = ws.cmd(json!({"subscribe": {"channel": "chat:a"}})).await;
    assert!(r.get("subscribe").is_some(), "{r}");
    let _bob = s.client("bob").await;
    let token = session(&s).await;

    let (_, body) = call(&s, &token, "connections", json!({})).await;
    let list = body["result"]["connections"].as_array().unwrap().clone();
    assert_eq!(body["result"]["total"], 2, "{body}");
    let alice = list.iter().find(|c| c["user"] == "alice").unwrap();
    assert_eq!(alice["transport"], "websocket");
    assert_eq!(alice["protocol"], "json");
    assert_eq!(alice["channels"], json!(["chat:a"]));

    let (_, body) = call(&s, &token, "connections", json!({"search": "chat:a"})).await;
    assert_eq!(body["result"]["total"], 1, "{body}");
    let (_, body) = call(&s, &token, "connections", json!({"user": "bob"})).await;
    assert_eq!(body["result"]["connections"][0]["user"], "bob", "{body}");
    let (_, body) = call(&s, &token, "connections", json!({"user": 5})).await;
    assert_eq!(body["error"]["code"], 107, "{body}");
    s.stop().await;
}

#[tokio::test]
async fn a_channel_watched_live_streams_publications_and_joins() {
    let s = TestServer::start(admin(json!({}))).await;
    let token = session(&s).await;
    let watch = reqwest::Client::new()
        .get(s.http("/admin/watch?channel=room:w"))
        .header("Authorization", format!("token {token}"));
    let mut events = Pushes::open(watch, b"\n\n").await;

    let mut ws = s.client("zoe").await;
    let r = ws.cmd(json!({"subscribe": {"channel": "room:w"}})).await;
    assert!(r.get("subscribe").is_some(), "{r}");
    let join = events.next().await.unwrap();
    assert_eq!(join["join"]["info"]["user"], "zoe", "{join}");
    s.api("publish", json!({"channel": "room:w", "data": {"n": 1}}))
        .await;
    let publication = events.next().await.unwrap();
    assert_eq!(publication["pub"]["data"], json!({"n": 1}), "{publication}");
    // The view is no connection.
    let (_, body) = call(&s, &token, "info", json!({})).await;
    assert_eq!(body["result"]["nodes"][0]["num_clients"], 1, "{body}");

    // Closing the view leaves the channel.
    drop(events);
    drop(ws);
    eventually("the channel left", || async {
        let r = s.api("channels", json!({})).await;
        r["result"]["channels"].as_object().unwrap().is_empty()
    })
    .await;

    for bad in ["/admin/watch", "/admin/watch?channel="] {
        let r = reqwest::Client::new()
            .get(s.http(bad))
            .header("Authorization", format!("token {token}"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::BAD_REQUEST, "{bad}");
    }
    let r = reqwest::get(s.http("/admin/watch?channel=room:w"))
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    s.stop().await;
}

#[tokio::test]
async fn the_ui_is_served_embedded_with_a_policy_that_keeps_it_home() {
    let s = TestServer::start(admin(json!({}))).await;
    let r = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
        .get(s.http("/admin"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::PERMANENT_REDIRECT);
    assert_eq!(r.headers()["location"], "/admin/");
    for (path, kind) in [
        ("/admin/", "text/html"),
        ("/admin/admin.js", "text/javascript"),
        ("/admin/admin.css", "text/css"),
    ] {
        let r = reqwest::get(s.http(path)).await.unwrap();
        assert_eq!(r.status(), StatusCode::OK, "{path}");
        let h = r.headers();
        assert!(h["content-type"].to_str().unwrap().starts_with(kind));
        assert!(h["content-security-policy"]
            .to_str()
            .unwrap()
            .starts_with("default-src 'self'"));
        let body = r.text().await.unwrap();
        assert!(!body.contains("https://"), "{path} names another host");
    }
    let init: Value = reqwest::get(s.http("/admin/init"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(init["insecure"], false);
    assert_eq!(init["authenticated"], false);
    s.stop().await;
}

#[tokio::test]
async fn insecure_needs_no_login_and_dev_turns_it_on() {
    let s = TestServer::start_dev().await;
    let post = |content_type: &'static str, origin: Option<String>| {
        let mut r = reqwest::Client::new()
            .post(s.http("/admin/api/info"))
            .header("content-type", content_type)
            .body("{}");
        if let Some(o) = origin {
            r = r.header("origin", o);
        }
        async move { r.send().await.unwrap().status() }
    };
    assert_eq!(post("application/json", None).await, StatusCode::OK);
    let own = format!("http://{}", s.addr);
    assert_eq!(post("application/json", Some(own)).await, StatusCode::OK);
    // No page elsewhere drives an admin without a login: a form-like body
    // (which a browser sends cross-site without asking) and a request
    // from another origin are refused.
    assert_eq!(
        post("text/plain", None).await,
        StatusCode::UNSUPPORTED_MEDIA_TYPE
    );
    assert_eq!(
        post("application/json", Some("http://evil.example".into())).await,
        StatusCode::UNAUTHORIZED
    );
    let (status, _) = login(&s, "anything").await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    s.stop().await;
}

#[tokio::test]
async fn the_ui_moves_to_the_internal_port_unless_external() {
    let s = TestServer::start(with_internal_port(admin(json!({})))).await;
    let internal = s.internal.expect("an internal listener");
    let on = |base: String| async move {
        reqwest::get(format!("{base}/admin/"))
            .await
            .unwrap()
            .status()
    };
    assert_eq!(on(format!("http://{internal}")).await, StatusCode::OK);
    assert_eq!(on(s.http("")).await, StatusCode::NOT_FOUND);
    s.stop().await;

    let s = TestServer::start(with_internal_port(admin(json!({"external": true})))).await;
    let internal = s.internal.expect("an internal listener");
    assert_eq!(on(s.http("")).await, StatusCode::OK);
    assert_eq!(
        on(format!("http://{internal}")).await,
        StatusCode::NOT_FOUND
    );
    s.stop().await;
}

#[test]
fn an_admin_without_password_or_secret_is_refused_naming_the_key() {
    for (admin, key) in [
        // At the root of the public listener its API would be the
        // server API's.
        (
            json!({"enabled": true, "insecure": true, "handler_prefix": ""}),
            "admin.handler_prefix",
        ),
        (
            json!({"enabled": true, "password": "p", "secret": "s", "session_ttl": "9000h"}),
            "admin.session_ttl",
        ),
        (json!({"enabled": true, "secret": "s"}), "admin.password"),
        (json!({"enabled": true, "password": "p"}), "admin.secret"),
        (
            json!({"enabled": true, "insecure": true, "handler_prefix": "admin"}),
            "admin.handler_prefix",
        ),
    ] {
        let err = config_refusal(&json!({ "admin": admin }));
        assert!(err.contains(key), "{err}");
    }
}

fn with_internal_port(mut config: Value) -> Value {
    merge(&mut config, json!({"http_server": {"internal_port": "0"}}));
    config
}
