//! The proxies over gRPC (Centrifugo's `CentrifugoProxy` service): each
//! call, its errors, disconnects and timeout, the server's own refreshes,
//! one HTTP/2 connection per proxy.

use std::time::{Duration, Instant};

use serde_json::json;

use herald_testkit::*;

use super::backend::Backend;
use super::{asked, connect_as, refresh_script, script, server};

#[tokio::test]
async fn grpc_proxies_serve_the_same_calls() {
    let backend = Backend::new(script);
    let addr = backend.serve_grpc().await;
    let s = server(
        &format!("grpc://{addr}"),
        json!({"client": {"proxy": {"connect": {"grpc": {
            "credentials_key": "authorization", "credentials_value": "Bearer backend-key"
        }}}}}),
    )
    .await;
    let (mut alice, reply) = connect_as(&s, json!({"as": "alice"})).await;
    assert_eq!(
        reply["connect"]["data"],
        json!({"welcome": "alice"}),
        "{reply}"
    );
    let seen = backend.calls("connect");
    assert_eq!(seen[0].body["data"], json!({"as": "alice"}));
    assert_eq!(
        seen[0].header("x-session"),
        Some("cookie-1"),
        "headers go as metadata"
    );
    assert_eq!(
        seen[0].header("authorization"),
        Some("Bearer backend-key"),
        "no client header replaces the proxy's credentials"
    );

    let r = alice.cmd(json!({"subscribe": {"channel": "px:g"}})).await;
    assert_eq!(r["subscribe"]["data"], json!({"hello": "px:g"}), "{r}");
    let r = alice
        .cmd(json!({"subscribe": {"channel": "px:denied"}}))
        .await;
    assert_eq!(r["error"]["code"], 4403, "{r}");
    let r = alice
        .cmd(json!({"publish": {"channel": "px:g", "data": {"text": "grpc"}}}))
        .await;
    assert!(r.get("publish").is_some(), "{r}");
    assert_eq!(
        alice.push().await["pub"]["data"],
        json!({"text": "GRPC", "checked": true})
    );
    let r = alice
        .cmd(json!({"rpc": {"method": "m", "data": [1]}}))
        .await;
    assert_eq!(r["rpc"]["data"], json!({"method": "m", "echo": [1]}), "{r}");
    // Bytes that are not JSON never reach a frame.
    let r = alice
        .cmd(json!({"subscribe": {"channel": "px:notjson"}}))
        .await;
    assert_eq!(r["error"]["code"], 100, "{r}");
    // A failing gRPC call is an internal error.
    let r = alice
        .cmd(json!({"subscribe": {"channel": "px:broken"}}))
        .await;
    assert_eq!(r["error"]["code"], 100, "{r}");
    // A backend slower than the proxy's timeout: error 100, in time.
    let started = Instant::now();
    let (_ws, reply) = connect_as(&s, json!({"as": "slow"})).await;
    assert_eq!(reply["error"]["code"], 100, "{reply}");
    assert!(started.elapsed() < Duration::from_secs(3), "bounded");
    // A disconnect answer closes the connection, at connect or later.
    let mut ws = Ws::open(&s.ws_url()).await;
    ws.send(json!({"connect": {"data": {"as": "disconnect"}}}))
        .await;
    assert_eq!(ws.closed().await, (4501, "go away".to_string()));
    alice
        .send(json!({"subscribe": {"channel": "px:kick"}}))
        .await;
    assert_eq!(alice.closed().await, (4502, "kicked".to_string()));
    // Every call of a proxy went over its one HTTP/2 connection, the timed
    // out one included: connect, subscribe, publish and rpc.
    assert_eq!(backend.connections(), 4);
}

#[tokio::test]
async fn grpc_refresh_and_sub_refresh_proxies_renew_or_end() {
    let backend = Backend::new(refresh_script);
    let endpoint = format!("grpc://{}", backend.serve_grpc().await);
    let s = TestServer::start(json!({
        "client": {"proxy": {"refresh": {
            "enabled": true, "endpoint": endpoint, "include_connection_meta": true,
        }}},
        "channel": {
            "proxy": {"sub_refresh": {"endpoint": endpoint}},
            "namespaces": [{"name": "sr", "sub_refresh_proxy_enabled": true,
                "allow_publish_for_subscriber": true}],
        },
    }))
    .await;
    let expiring = |user: &str| {
        let claims = json!({"sub": user, "exp": now() + 1, "meta": {"m": user}});
        json!({"connect": {"token": token(claims)}})
    };
    let subscribe = |user: &str| {
        let claims = json!({"sub": user, "channel": "sr:feed", "exp": now() + 1});
        json!({"subscribe": {"channel": "sr:feed", "token": token(claims)}})
    };
    // `keep`'s connection and subscription both expire, and both go on.
    let mut keep = Ws::open(&s.ws_url()).await;
    let r = keep.cmd(expiring("keep")).await;
    assert!(r["connect"].get("expires").is_none(), "{r}");
    let r = keep.cmd(subscribe("keep")).await;
    assert!(r["subscribe"].get("expires").is_none(), "{r}");
    // `end`'s expiring connection is closed; its subscription on a lasting
    // connection ends.
    let mut end = Ws::open(&s.ws_url()).await;
    let r = end.cmd(expiring("end")).await;
    assert!(r.get("connect").is_some(), "{r}");
    let mut end_sub = s.client("end").await;
    let r = end_sub.cmd(subscribe("end")).await;
    assert!(r.get("subscribe").is_some(), "{r}");
    assert_eq!(end.closed().await.0, 3005, "expired by the backend");
    assert_eq!(end_sub.push().await["unsubscribe"]["code"], 2501);

    eventually("keep refreshed", || async {
        asked(&backend, "refresh", "keep") == 1 && asked(&backend, "sub_refresh", "keep") == 1
    })
    .await;
    let refresh = backend.calls("refresh");
    let refresh = refresh.iter().find(|c| c.body["user"] == "keep").unwrap();
    assert_eq!(refresh.body["meta"], json!({"m": "keep"}));
    let sub_refresh = backend.calls("sub_refresh");
    let sub_refresh = sub_refresh.iter().find(|c| c.body["user"] == "keep");
    assert_eq!(sub_refresh.unwrap().body["channel"], "sr:feed");
    // Still connected and subscribed, with the info of both answers.
    let r = keep
        .cmd(json!({"publish": {"channel": "sr:feed", "data": {"n": 1}}}))
        .await;
    assert!(r.get("publish").is_some(), "{r}");
    let push = keep.push().await;
    let info = &push["pub"]["info"];
    assert_eq!(info["conn_info"], json!({"refreshed": true}), "{info}");
    assert_eq!(info["chan_info"], json!({"refreshed": true}), "{info}");
}
