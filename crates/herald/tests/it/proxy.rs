//! The application's backend in the loop: connect, refresh, subscribe,
//! publish, sub_refresh and RPC proxies, over HTTP and over gRPC, against a
//! real backend on loopback whose answers each test scripts. What the
//! backend saw (body and headers) is checked as well as what the client
//! got.

mod backend;
mod grpc;
mod routing;

use std::time::Duration;

use serde_json::{json, Value};

use herald_testkit::*;

use backend::Backend;

/// The scripted backend most tests use: decisions by what the client sent.
fn script(call: &str, body: &Value) -> (u16, Value) {
    let said = |key: &str| body["data"][key].as_str().unwrap_or("").to_string();
    match call {
        "connect" => match said("as").as_str() {
            "error" => (
                200,
                json!({"error": {"code": 4403, "message": "who are you?"}}),
            ),
            "disconnect" => (
                200,
                json!({"disconnect": {"code": 4501, "reason": "go away"}}),
            ),
            "status500" => (500, json!({})),
            "status403" => (403, json!({})),
            "garbage" => (200, json!("garbage")),
            "slow" => (200, json!("sleep")),
            "nobody" => (200, json!({})),
            "bad_b64" => (200, json!({"result": {"user": "x", "b64info": "%%%"}})),
            "expired" => (200, json!({"result": {"user": "x", "expire_at": 1000}})),
            "expiring" => (
                200,
                json!({"result": {"user": "x", "expire_at": now() + 600}}),
            ),
            "b64" => (
                200,
                json!({"result": {
                    "user": "b64",
                    "b64info": b64(br#"{"name":"B64"}"#),
                    "b64data": b64(br#"{"welcome":"b64"}"#),
                    "channels": ["room:b64"],
                }}),
            ),
            "badcode" => (200, json!({"disconnect": {"code": 1234, "reason": "x"}})),
            "longreason" => (
                200,
                json!({"disconnect": {"code": 4502, "reason": "é".repeat(200)}}),
            ),
            user => (
                200,
                json!({"result": {
                    "user": user,
                    "info": {"name": user.to_uppercase()},
                    "data": {"welcome": user},
                    "channels": ["chat:lobby"],
                    "subs": {
                        "room:own": {"info": {"seat": 7}, "override": {"presence": {"value": false}}},
                        "room:seat": {"info": {"seat": 8}},
                    },
                    "meta": {"session": format!("s-{user}")},
                }}),
            ),
        },
        "subscribe" => match body["channel"].as_str().unwrap_or("") {
            "px:denied" => (
                200,
                json!({"error": {"code": 4403, "message": "not yours"}}),
            ),
            "px:kick" => (
                200,
                json!({"disconnect": {"code": 4502, "reason": "kicked"}}),
            ),
            "px:broken" => (502, json!({})),
            "px:teapot" => (418, json!({})),
            "px:past" => (200, json!({"result": {"expire_at": 1000}})),
            "px:later" => (200, json!({"result": {"expire_at": now() + 600}})),
            "px:quiet" => (
                200,
                json!({"result": {"override": {"presence": {"value": false}}}}),
            ),
            _ => (
                200,
                json!({"result": {"info": {"role": "reader"}, "data": {"hello": body["channel"]}}}),
            ),
        },
        "publish" => match body["data"]["text"].as_str().unwrap_or("") {
            "spam" => (200, json!({"error": {"code": 4400, "message": "no spam"}})),
            "ephemeral" => (200, json!({"result": {"skip_history": true}})),
            text => (
                200,
                json!({"result": {"data": {"text": text.to_uppercase(), "checked": true}}}),
            ),
        },
        "rpc" if body.get("b64data").is_some() => (
            200,
            json!({"result": {"b64data": body["b64data"]}, "encoding": body["encoding"]}),
        ),
        "rpc" => match body["method"].as_str().unwrap_or("") {
            "fail" => (
                200,
                json!({"error": {"code": 4418, "message": "teapot", "temporary": true}}),
            ),
            method => (
                200,
                json!({"result": {"data": {"method": method, "echo": body["data"]}}}),
            ),
        },
        _ => (404, json!({})),
    }
}

fn b64(bytes: &[u8]) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

fn proxies(endpoint: &str, extra: Value) -> Value {
    let mut p = json!({"endpoint": endpoint, "timeout": "500ms"});
    merge(&mut p, extra);
    p
}

/// A server whose every proxy calls `base` (`http://…` or `grpc://…`).
async fn server(base: &str, extra: Value) -> TestServer {
    let path = |call: &str| {
        if base.starts_with("grpc") {
            base.to_string()
        } else {
            format!("{base}/{call}")
        }
    };
    let mut config = json!({
        "client": {"proxy": {
            "connect": merge_into(json!({"enabled": true}), proxies(&path("connect"), json!({
                "http_headers": ["x-session"],
                "emulated_headers": ["authorization"],
            }))),
        }},
        "channel": {
            "proxy": {
                "subscribe": proxies(&path("subscribe"), json!({
                    "include_connection_meta": true,
                    "emulated_headers": ["authorization"],
                    "http": {"status_to_code_transforms": [
                        {"status_code": 418, "to_error": {"code": 4418, "message": "teapot"}}
                    ]},
                })),
                "publish": proxies(&path("publish"), json!({})),
            },
            "namespaces": [
                {"name": "chat", "allow_subscribe_for_client": true},
                {"name": "room", "presence": true},
                {"name": "px", "subscribe_proxy_enabled": true, "publish_proxy_enabled": true,
                 "presence": true},
                {"name": "pxh", "publish_proxy_enabled": true, "history_size": 10, "history_ttl": "60s",
                 "allow_subscribe_for_client": true, "allow_history_for_client": true},
            ]
        },
        "rpc": {
            "proxy": proxies(&path("rpc"), json!({})),
            "without_namespace": {"proxy_enabled": true},
            "namespaces": [{"name": "off"}],
            "ping": {"enabled": true},
        },
    });
    merge(&mut config, extra);
    TestServer::start(config).await
}

fn merge_into(mut a: Value, b: Value) -> Value {
    merge(&mut a, b);
    a
}

/// The presence entries of `channel`, once there are `n`.
async fn presence(s: &TestServer, channel: &str, n: usize) -> Vec<Value> {
    let entries = || async {
        let r = s.api("presence", json!({ "channel": channel })).await;
        let entries = r["result"]["presence"].as_object().cloned();
        entries
            .unwrap_or_else(|| panic!("{r}"))
            .into_values()
            .collect::<Vec<_>>()
    };
    eventually(&format!("{n} present in {channel}"), || async {
        entries().await.len() == n
    })
    .await;
    entries().await
}

/// Opens a connection with no token, sending `data` with connect.
async fn connect_as(s: &TestServer, data: Value) -> (Ws, Value) {
    let mut ws = Ws::open_with_headers(
        &s.ws_url(),
        &[("X-Session", "cookie-1"), ("X-Other", "hidden")],
    )
    .await;
    let id = ws
        .send(
            json!({"connect": {"data": data, "name": "js", "version": "5.8.0",
            "subs": {"chat:lobby": {}},
            "headers": {"Authorization": "Bearer emulated", "X-Ignored": "1"}}}),
        )
        .await;
    let reply = ws.reply(id).await;
    (ws, reply)
}

#[tokio::test]
async fn the_connect_proxy_says_who_a_client_without_a_token_is() {
    let backend = Backend::new(script);
    let addr = backend.serve_http().await;
    let s = server(&format!("http://{addr}"), json!({})).await;
    let (mut ws, reply) = connect_as(&s, json!({"as": "alice"})).await;
    let connect = &reply["connect"];
    assert_eq!(connect["data"], json!({"welcome": "alice"}), "{reply}");
    assert!(connect["subs"]["chat:lobby"].is_object(), "{reply}");
    assert!(connect["subs"]["room:own"].is_object(), "{reply}");

    // What the backend was told.
    let seen = backend.calls("connect");
    assert_eq!(seen.len(), 1);
    let call = &seen[0];
    let body = &call.body;
    assert_eq!(body["client"], connect["client"]);
    assert_eq!(body["transport"], "websocket");
    assert_eq!(body["protocol"], "json");
    assert_eq!(body["encoding"], "json");
    assert_eq!(body["data"], json!({"as": "alice"}));
    assert_eq!(body["name"], "js");
    assert_eq!(body["version"], "5.8.0");
    assert_eq!(
        body["channels"],
        json!(["chat:lobby"]),
        "the channels the client asks to recover"
    );
    assert_eq!(call.header("x-session"), Some("cookie-1"));
    assert_eq!(call.header("authorization"), Some("Bearer emulated"));
    assert_eq!(call.header("x-other"), None, "only listed headers pass");
    assert_eq!(call.header("x-ignored"), None);

    // The user and info the backend gave are the connection's.
    let r = s
        .api(
            "publish",
            json!({"channel": "chat:lobby", "data": {"n": 1}}),
        )
        .await;
    assert!(r.get("error").is_none(), "{r}");
    let push = ws.push().await;
    assert_eq!(push["pub"]["data"], json!({"n": 1}));
    let present = presence(&s, "room:seat", 1).await;
    assert_eq!(present[0]["user"], "alice");
    assert_eq!(
        present[0]["conn_info"],
        json!({"name": "ALICE"}),
        "the result's info"
    );
    assert_eq!(
        present[0]["chan_info"],
        json!({"seat": 8}),
        "the info of its subs entry"
    );
    assert!(
        presence(&s, "room:own", 0).await.is_empty(),
        "joined with room:seat, yet not present: the override switched presence off"
    );
    let clients = s.api("info", json!({})).await;
    assert_eq!(clients["result"]["nodes"][0]["num_users"], 1, "{clients}");

    // A client with a token is not asked about.
    let _token_client = s.client("bob").await;
    assert_eq!(backend.calls("connect").len(), 1);
}

#[tokio::test]
async fn the_connect_proxy_s_errors_and_disconnects_reach_the_client() {
    let backend = Backend::new(script);
    let addr = backend.serve_http().await;
    let s = server(
        &format!("http://{addr}"),
        json!({"client": {"proxy": {"connect": {"http": {"status_to_code_transforms": [
            {"status_code": 403, "to_disconnect": {"code": 4403, "reason": "forbidden"}}
        ]}}}}}),
    )
    .await;
    let (_ws, reply) = connect_as(&s, json!({"as": "error"})).await;
    assert_eq!(reply["error"]["code"], 4403, "{reply}");
    assert_eq!(reply["error"]["message"], "who are you?");

    for (said, expected) in [
        ("status500", 100),
        ("garbage", 100),
        ("slow", 100),
        ("bad_b64", 100),
        ("expired", 110),
    ] {
        let started = std::time::Instant::now();
        let (_ws, reply) = connect_as(&s, json!({ "as": said })).await;
        assert_eq!(reply["error"]["code"], expected, "{said}: {reply}");
        assert!(
            started.elapsed() < Duration::from_secs(3),
            "{said}: bounded by the timeout"
        );
    }
    for (said, code, reason) in [
        ("disconnect", 4501, "go away"),
        ("status403", 4403, "forbidden"),
        ("nobody", 3501, "bad request"),
        // Codes applications may not use close as an internal error.
        ("badcode", 3004, "internal server error"),
        // A reason longer than a close frame takes is cut.
        ("longreason", 4502, &"é".repeat(61)),
    ] {
        let (mut ws, _) = {
            let mut ws = Ws::open(&s.ws_url()).await;
            ws.send(json!({"connect": {"data": {"as": said}}})).await;
            (ws, ())
        };
        assert_eq!(ws.closed().await, (code, reason.to_string()), "{said}");
    }
}

#[tokio::test]
async fn the_connect_proxy_s_base64_fields_and_expiry_reach_the_client() {
    let backend = Backend::new(script);
    let addr = backend.serve_http().await;
    let s = server(&format!("http://{addr}"), json!({})).await;
    let (_ws, reply) = connect_as(&s, json!({"as": "b64"})).await;
    let connect = &reply["connect"];
    assert_eq!(connect["data"], json!({"welcome": "b64"}), "{reply}");
    assert!(connect.get("expires").is_none(), "{reply}");
    let present = presence(&s, "room:b64", 1).await;
    assert_eq!(present[0]["conn_info"], json!({"name": "B64"}));

    // An expiry ahead is the client's to refresh (no refresh proxy here).
    let (_ws, reply) = connect_as(&s, json!({"as": "expiring"})).await;
    assert_eq!(reply["connect"]["expires"], true, "{reply}");
    let ttl = reply["connect"]["ttl"].as_u64().unwrap_or_default();
    assert!((590..=600).contains(&ttl), "{reply}");
}

#[tokio::test]
async fn a_backend_that_is_down_gives_a_temporary_error_not_a_hang() {
    for scheme in ["http", "grpc"] {
        let port = free_port();
        let s = server(&format!("{scheme}://127.0.0.1:{port}"), json!({})).await;
        let started = std::time::Instant::now();
        let (_ws, reply) = connect_as(&s, json!({"as": "alice"})).await;
        assert_eq!(reply["error"]["code"], 100, "{scheme}: {reply}");
        assert_eq!(reply["error"]["temporary"], true, "{scheme}: {reply}");
        assert!(
            started.elapsed() < Duration::from_secs(3),
            "{scheme}: bounded by the timeout"
        );
        assert_eq!(s.metric("herald_proxy_errors_total").await, 1, "{scheme}");
    }
}

#[tokio::test]
async fn the_subscribe_proxy_decides_channel_access() {
    let backend = Backend::new(script);
    let addr = backend.serve_http().await;
    let s = server(&format!("http://{addr}"), json!({})).await;
    let (mut ws, _) = connect_as(&s, json!({"as": "alice"})).await;

    let r = ws
        .cmd(json!({"subscribe": {"channel": "px:news", "data": {"want": "all"}}}))
        .await;
    assert_eq!(r["subscribe"]["data"], json!({"hello": "px:news"}), "{r}");
    let seen = backend.calls("subscribe");
    let body = &seen.last().unwrap().body;
    assert_eq!(body["user"], "alice");
    assert_eq!(body["channel"], "px:news");
    assert_eq!(body["data"], json!({"want": "all"}));
    assert_eq!(
        body["meta"],
        json!({"session": "s-alice"}),
        "include_connection_meta"
    );
    assert!(r["subscribe"].get("expires").is_none(), "{r}");
    // The result's info is the subscription's, beside the connection's.
    let present = presence(&s, "px:news", 1).await;
    assert_eq!(present[0]["chan_info"], json!({"role": "reader"}));
    assert_eq!(present[0]["conn_info"], json!({"name": "ALICE"}));
    // An override switches the namespace's presence off for one channel.
    let r = ws.cmd(json!({"subscribe": {"channel": "px:quiet"}})).await;
    assert!(r.get("subscribe").is_some(), "{r}");
    // An expiry ahead is the client's to refresh (no sub_refresh proxy).
    let r = ws.cmd(json!({"subscribe": {"channel": "px:later"}})).await;
    assert_eq!(r["subscribe"]["expires"], true, "{r}");
    let ttl = r["subscribe"]["ttl"].as_u64().unwrap_or_default();
    assert!((590..=600).contains(&ttl), "{r}");
    presence(&s, "px:later", 1).await;
    assert!(
        presence(&s, "px:quiet", 0).await.is_empty(),
        "subscribed before px:later, yet not present"
    );

    let r = ws.cmd(json!({"subscribe": {"channel": "px:denied"}})).await;
    assert_eq!(r["error"]["code"], 4403, "{r}");
    let r = ws.cmd(json!({"subscribe": {"channel": "px:broken"}})).await;
    assert_eq!(r["error"]["code"], 100, "{r}");
    let r = ws.cmd(json!({"subscribe": {"channel": "px:teapot"}})).await;
    assert_eq!(r["error"]["code"], 4418, "a listed status: {r}");
    assert_eq!(r["error"]["message"], "teapot");
    let r = ws.cmd(json!({"subscribe": {"channel": "px:past"}})).await;
    assert_eq!(r["error"]["code"], 110, "an expiry in the past: {r}");
    // Headers go where they are listed: the emulated one to this proxy,
    // the connect proxy's transport header not.
    let call = backend.calls("subscribe").into_iter().next().unwrap();
    assert_eq!(call.header("authorization"), Some("Bearer emulated"));
    assert_eq!(call.header("x-session"), None);
    // Channels of namespaces without the proxy are not asked about.
    let before = backend.calls("subscribe").len();
    let r = ws
        .cmd(json!({"subscribe": {"channel": "chat:plain"}}))
        .await;
    assert!(r.get("subscribe").is_some(), "{r}");
    assert_eq!(backend.calls("subscribe").len(), before);

    ws.send(json!({"subscribe": {"channel": "px:kick"}})).await;
    assert_eq!(ws.closed().await, (4502, "kicked".to_string()));
}

#[tokio::test]
async fn the_publish_proxy_validates_and_rewrites_publications() {
    let backend = Backend::new(script);
    let addr = backend.serve_http().await;
    let s = server(&format!("http://{addr}"), json!({})).await;
    let (mut alice, _) = connect_as(&s, json!({"as": "alice"})).await;
    let (mut bob, _) = connect_as(&s, json!({"as": "bob"})).await;
    let r = bob.cmd(json!({"subscribe": {"channel": "px:room"}})).await;
    assert!(r.get("subscribe").is_some(), "{r}");

    let r = alice
        .cmd(json!({"publish": {"channel": "px:room", "data": {"text": "hello"}}}))
        .await;
    assert!(r.get("publish").is_some(), "{r}");
    let push = bob.push().await;
    assert_eq!(
        push["pub"]["data"],
        json!({"text": "HELLO", "checked": true}),
        "subscribers get what the backend returned"
    );
    assert_eq!(push["pub"]["info"]["user"], "alice");
    assert_eq!(
        push["pub"]["info"]["conn_info"],
        json!({"name": "ALICE"}),
        "the connect result's info goes with the publisher's publications"
    );
    let seen = backend.calls("publish");
    assert_eq!(seen[0].body["data"], json!({"text": "hello"}));
    assert_eq!(seen[0].body["user"], "alice");

    let r = alice
        .cmd(json!({"publish": {"channel": "px:room", "data": {"text": "spam"}}}))
        .await;
    assert_eq!(r["error"]["code"], 4400, "{r}");
    assert_eq!(r["error"]["message"], "no spam");

    // The proxy replaces the namespace's permissions (none here) and its
    // data goes to history too.
    let r = alice
        .cmd(json!({"publish": {"channel": "pxh:log", "data": {"text": "kept"}}}))
        .await;
    assert!(r.get("publish").is_some(), "{r}");
    let r = alice
        .cmd(json!({"publish": {"channel": "pxh:log", "data": {"text": "ephemeral"}}}))
        .await;
    assert!(r.get("publish").is_some(), "{r}");
    let h = s
        .api("history", json!({"channel": "pxh:log", "limit": 10}))
        .await;
    assert_eq!(
        h["result"]["publications"].as_array().unwrap().len(),
        1,
        "skip_history kept it out: {h}"
    );
    assert_eq!(
        h["result"]["publications"][0]["data"],
        json!({"text": "KEPT", "checked": true}),
        "{h}"
    );
}

#[tokio::test]
async fn rpc_is_routed_by_method_to_its_proxy() {
    let backend = Backend::new(script);
    let addr = backend.serve_http().await;
    let s = server(&format!("http://{addr}"), json!({})).await;
    let (mut ws, _) = connect_as(&s, json!({"as": "alice"})).await;

    let r = ws
        .cmd(json!({"rpc": {"method": "sum", "data": {"a": 1, "b": 2}}}))
        .await;
    assert_eq!(
        r["rpc"]["data"],
        json!({"method": "sum", "echo": {"a": 1, "b": 2}}),
        "{r}"
    );
    let r = ws.cmd(json!({"rpc": {"method": "fail", "data": {}}})).await;
    assert_eq!(r["error"]["code"], 4418, "{r}");
    assert_eq!(r["error"]["temporary"], true, "{r}");
    // A namespace without its proxy, and one not configured at all.
    let r = ws
        .cmd(json!({"rpc": {"method": "off:x", "data": {}}}))
        .await;
    assert_eq!(r["error"]["code"], 108, "{r}");
    let r = ws
        .cmd(json!({"rpc": {"method": "nowhere:x", "data": {}}}))
        .await;
    assert_eq!(r["error"]["code"], 104, "{r}");
    // The built-in ping never reaches the backend.
    let before = backend.calls("rpc").len();
    let r = ws.cmd(json!({"rpc": {"method": "ping"}})).await;
    assert!(r.get("rpc").is_some(), "{r}");
    assert_eq!(backend.calls("rpc").len(), before);
}

#[tokio::test]
async fn binary_encoding_sends_and_takes_base64() {
    for grpc in [false, true] {
        let backend = Backend::new(script);
        let base = if grpc {
            format!("grpc://{}", backend.serve_grpc().await)
        } else {
            format!("http://{}", backend.serve_http().await)
        };
        let s = server(&base, json!({"rpc": {"proxy": {"binary_encoding": true}}})).await;
        let (mut ws, _) = connect_as(&s, json!({"as": "alice"})).await;
        let r = ws
            .cmd(json!({"rpc": {"method": "echo", "data": {"x": 1}}}))
            .await;
        assert_eq!(r["rpc"]["data"], json!({"x": 1}), "{base}: {r}");
        let call = backend.calls("rpc").pop().unwrap();
        assert_eq!(call.body["encoding"], "binary", "{base}");
        assert!(call.body.get("data").is_none(), "{base}");
        let b64 = call.body["b64data"].as_str().unwrap();
        use base64::Engine as _;
        let decoded = base64::engine::general_purpose::STANDARD
            .decode(b64)
            .unwrap();
        assert_eq!(
            serde_json::from_slice::<Value>(&decoded).unwrap(),
            json!({"x": 1}),
            "{base}"
        );
    }
}

#[tokio::test]
async fn without_rpc_proxies_every_method_is_unknown() {
    let s = TestServer::start(json!({})).await;
    let mut ws = s.client("u").await;
    let r = ws.cmd(json!({"rpc": {"method": "sum", "data": {}}})).await;
    assert_eq!(r["error"]["code"], 104, "{r}");
}

/// Refresh decisions by the user: `keep` goes on for an hour, `end`
/// expires, `gone` gets HTTP 403 (a listed status), anyone else's backend
/// fails (asked again in a minute). A refreshed connection gets new meta,
/// which RPC calls echo.
fn refresh_script(call: &str, body: &Value) -> (u16, Value) {
    match (call, body["user"].as_str().unwrap_or("")) {
        ("refresh", "keep") => (
            200,
            json!({"result": {"expire_at": now() + 3600, "info": {"refreshed": true},
                "meta": {"m": "renewed"}}}),
        ),
        ("sub_refresh", "keep") => (
            200,
            json!({"result": {"expire_at": now() + 3600, "info": {"refreshed": true}}}),
        ),
        ("refresh" | "sub_refresh", "end") => (200, json!({"result": {"expired": true}})),
        ("refresh" | "sub_refresh", "gone") => (403, json!({})),
        ("refresh" | "sub_refresh", _) => (500, json!({})),
        ("rpc", _) => (200, json!({"result": {"data": {"meta": body["meta"]}}})),
        _ => (404, json!({})),
    }
}

fn transforms() -> Value {
    json!({"status_to_code_transforms": [
        {"status_code": 403, "to_disconnect": {"code": 4501, "reason": "session over"}}
    ]})
}

/// How often the backend was asked about `user`.
fn asked(backend: &Backend, call: &str, user: &str) -> usize {
    backend
        .calls(call)
        .iter()
        .filter(|c| c.body["user"] == user)
        .count()
}

#[tokio::test]
async fn the_refresh_proxy_refreshes_expiring_connections_itself() {
    let backend = Backend::new(refresh_script);
    let addr = backend.serve_http().await;
    let s = TestServer::start(json!({
        "client": {"proxy": {"refresh": {
            "enabled": true, "endpoint": format!("http://{addr}/refresh"),
            "include_connection_meta": true, "http": transforms(),
        }}},
        "channel": {"namespaces": [{"name": "room", "allow_subscribe_for_client": true,
            "allow_publish_for_subscriber": true}]},
        "rpc": {
            "proxy": {"endpoint": format!("http://{addr}/rpc"), "include_connection_meta": true},
            "without_namespace": {"proxy_enabled": true},
        },
    }))
    .await;
    let connect = |user: &'static str| {
        let s = &s;
        async move {
            let mut ws = Ws::open(&s.ws_url()).await;
            let claims = json!({"sub": user, "exp": now() + 1, "meta": {"m": user}});
            let r = ws.cmd(json!({"connect": {"token": token(claims)}})).await;
            assert!(
                r["connect"].get("expires").is_none(),
                "the client never refreshes: {r}"
            );
            ws
        }
    };
    let mut keep = connect("keep").await;
    let r = keep.cmd(json!({"subscribe": {"channel": "room:a"}})).await;
    assert!(r.get("subscribe").is_some(), "{r}");
    let mut end = connect("end").await;
    let mut gone = connect("gone").await;
    let mut flaky = connect("flaky").await;
    assert_eq!(end.closed().await.0, 3005, "expired by the backend");
    assert_eq!(gone.closed().await, (4501, "session over".to_string()));
    eventually("keep and flaky asked", || async {
        asked(&backend, "refresh", "keep") == 1 && asked(&backend, "refresh", "flaky") == 1
    })
    .await;
    let call = backend
        .calls("refresh")
        .into_iter()
        .find(|c| c.body["user"] == "keep")
        .unwrap();
    assert_eq!(call.body["meta"], json!({"m": "keep"}));
    // The refreshed connection took the backend's info…
    let r = keep
        .cmd(json!({"publish": {"channel": "room:a", "data": {"n": 1}}}))
        .await;
    assert!(r.get("publish").is_some(), "{r}");
    let push = keep.push().await;
    assert_eq!(
        push["pub"]["info"]["conn_info"],
        json!({"refreshed": true}),
        "{push}"
    );
    // …and its meta, which later calls carry (the failed one kept its own)…
    for (ws, meta) in [(&mut keep, "renewed"), (&mut flaky, "flaky")] {
        let r = ws
            .cmd(json!({"rpc": {"method": "whoami", "data": {}}}))
            .await;
        assert_eq!(r["rpc"]["data"]["meta"], json!({ "m": meta }), "{r}");
    }
    // …and its new expiry, an hour away: it is not asked again, nor is
    // the failing one before its minute is up; both stay connected.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(asked(&backend, "refresh", "keep"), 1);
    assert_eq!(asked(&backend, "refresh", "flaky"), 1);
    for ws in [&mut keep, &mut flaky] {
        let r = ws.cmd(json!({"subscribe": {"channel": "room:b"}})).await;
        assert!(r.get("subscribe").is_some(), "{r}");
    }
    // A client may not refresh what the server refreshes.
    keep.send(json!({"refresh": {"token": "x"}})).await;
    assert_eq!(keep.closed().await.0, 3501);
}

#[tokio::test]
async fn the_sub_refresh_proxy_keeps_or_ends_subscriptions() {
    let backend = Backend::new(refresh_script);
    let addr = backend.serve_http().await;
    let s = TestServer::start(json!({
        "channel": {
            "proxy": {"sub_refresh": {"endpoint": format!("http://{addr}/sub_refresh"), "http": transforms()}},
            "namespaces": [{"name": "sr", "sub_refresh_proxy_enabled": true,
                "allow_publish_for_subscriber": true}],
        },
    }))
    .await;
    let subscribe = |user: &'static str| {
        let s = &s;
        async move {
            let mut ws = s.client(user).await;
            let claims = json!({"sub": user, "channel": "sr:feed", "exp": now() + 1});
            let r = ws
                .cmd(json!({"subscribe": {"channel": "sr:feed", "token": token(claims)}}))
                .await;
            assert!(
                r["subscribe"].get("expires").is_none(),
                "server-side refresh: {r}"
            );
            ws
        }
    };
    let mut keep = subscribe("keep").await;
    let mut flaky = subscribe("flaky").await;
    let mut end = subscribe("end").await;
    let mut gone = subscribe("gone").await;
    let push = end.push().await;
    assert_eq!(push["unsubscribe"]["code"], 2501, "{push}");
    assert_eq!(gone.closed().await, (4501, "session over".to_string()));
    eventually("keep and flaky asked", || async {
        asked(&backend, "sub_refresh", "keep") == 1 && asked(&backend, "sub_refresh", "flaky") == 1
    })
    .await;
    let seen = backend.calls("sub_refresh");
    assert_eq!(seen[0].body["channel"], "sr:feed");
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(
        asked(&backend, "sub_refresh", "keep"),
        1,
        "renewed for an hour"
    );
    let r = s
        .api(
            "publish",
            json!({"channel": "sr:feed", "data": {"still": true}}),
        )
        .await;
    assert!(r.get("error").is_none(), "{r}");
    for ws in [&mut keep, &mut flaky] {
        assert_eq!(ws.push().await["pub"]["data"], json!({"still": true}));
    }
    // The renewed subscription took the backend's info.
    let r = keep
        .cmd(json!({"publish": {"channel": "sr:feed", "data": {"n": 1}}}))
        .await;
    assert!(r.get("publish").is_some(), "{r}");
    let push = keep.push().await;
    assert_eq!(
        push["pub"]["info"]["chan_info"],
        json!({"refreshed": true}),
        "{push}"
    );
    // The client may not refresh it itself.
    keep.send(json!({"sub_refresh": {"channel": "sr:feed", "token": "x"}}))
        .await;
    assert_eq!(keep.closed().await.0, 3501);
}

#[tokio::test]
async fn proxies_without_endpoints_are_refused_at_start() {
    for (config, key) in [
        (
            json!({"channel": {"namespaces": [{"name": "aa", "subscribe_proxy_enabled": true}]}}),
            "channel.namespaces[0].subscribe_proxy_enabled",
        ),
        (
            json!({"channel": {"namespaces": [{"name": "aa", "publish_proxy_enabled": true,
                "publish_proxy_name": "missing"}]}}),
            "channel.namespaces[0].publish_proxy_enabled",
        ),
        (
            json!({"client": {"proxy": {"connect": {"enabled": true, "endpoint": "ftp://x"}}}}),
            "client.proxy.connect.endpoint",
        ),
        (
            json!({"rpc": {"without_namespace": {"proxy_enabled": true}}}),
            "rpc.without_namespace.proxy_enabled",
        ),
        (
            json!({"proxies": [{"name": "default", "endpoint": "http://127.0.0.1:1"}]}),
            "proxies[0].name",
        ),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.json");
        std::fs::write(&path, config.to_string()).unwrap();
        let err = herald::config::load(Some(&path), &Default::default(), &Default::default())
            .expect_err("refused");
        assert!(err.to_string().contains(key), "{key}: {err}");
    }
}
