//! Presence and join/leave events, over the protocol and the server API.

use serde_json::json;

use herald_testkit::*;

#[tokio::test]
async fn presence_and_join_leave() {
    let s = TestServer::start(json!({})).await;
    let mut a = Ws::open(&s.ws_url()).await;
    let t = token(json!({"sub": "alice", "info": {"name": "Alice"}}));
    a.cmd(json!({"connect": {"token": t}})).await;
    a.cmd(json!({"subscribe": {"channel": "room:1"}})).await;
    let p = a.push().await;
    assert_eq!(p["join"]["info"]["user"], "alice", "own join: {p}");
    let mut b = s.client("bob").await;
    b.cmd(json!({"subscribe": {"channel": "room:1"}})).await;
    let p = a.push().await;
    assert_eq!(p["channel"], "room:1");
    assert_eq!(p["join"]["info"]["user"], "bob", "{p}");

    let r = a.cmd(json!({"presence": {"channel": "room:1"}})).await;
    let members = r["presence"]["presence"].as_object().unwrap();
    assert_eq!(members.len(), 2, "{r}");
    let alice = members.values().find(|m| m["user"] == "alice").unwrap();
    assert_eq!(alice["conn_info"], json!({"name": "Alice"}));
    let r = a
        .cmd(json!({"presence_stats": {"channel": "room:1"}}))
        .await;
    assert_eq!(
        r["presence_stats"],
        json!({"num_clients": 2, "num_users": 2})
    );
    let r = s.api("presence_stats", json!({"channel": "room:1"})).await;
    assert_eq!(r["result"], json!({"num_clients": 2, "num_users": 2}));
    let r = s.api("presence", json!({"channel": "room:1"})).await;
    assert_eq!(r["result"]["presence"].as_object().unwrap().len(), 2);

    b.cmd(json!({"unsubscribe": {"channel": "room:1"}})).await;
    let p = a.push().await;
    assert_eq!(p["leave"]["info"]["user"], "bob", "{p}");
    let mut c = s.client("carol").await;
    c.cmd(json!({"subscribe": {"channel": "room:1"}})).await;
    c.close().await;
    assert_eq!(a.push().await["join"]["info"]["user"], "carol");
    assert_eq!(
        a.push().await["leave"]["info"]["user"],
        "carol",
        "a closed connection leaves"
    );
    let r = s.api("presence_stats", json!({"channel": "room:1"})).await;
    assert_eq!(r["result"], json!({"num_clients": 1, "num_users": 1}));
    s.stop().await;
}

#[tokio::test]
async fn presence_errors() {
    let s = TestServer::start(json!({})).await;
    let mut ws = s.client("u").await;
    let r = ws.cmd(json!({"presence": {"channel": "room:2"}})).await;
    assert_eq!(
        r["error"]["code"], 103,
        "presence for subscribers only: {r}"
    );
    let r = ws.cmd(json!({"presence": {"channel": "chat:2"}})).await;
    assert_eq!(
        r["error"]["code"], 108,
        "no presence in this namespace: {r}"
    );
    let r = s.api("presence", json!({"channel": "chat:2"})).await;
    assert_eq!(r["error"]["code"], 108);
    s.stop().await;
}

#[tokio::test]
async fn join_is_announced_only_after_a_positioned_subscribe_succeeds() {
    let s = TestServer::start(json!({})).await;
    let mut watcher = s.client("w").await;
    watcher
        .cmd(json!({"subscribe": {"channel": "roomh:1"}}))
        .await;
    assert_eq!(watcher.push().await["join"]["info"]["user"], "w");
    let mut ws = s.client("u").await;
    let id = ws.send(json!({"subscribe": {"channel": "roomh:1"}})).await;
    match ws.read().await {
        Event::Msg(m) => assert_eq!(m["id"], id, "the reply comes before any push: {m}"),
        Event::Closed(c) => panic!("closed: {c:?}"),
    }
    assert_eq!(ws.push().await["join"]["info"]["user"], "u");
    assert_eq!(watcher.push().await["join"]["info"]["user"], "u");
    // A subscribe that fails (error 112 on request) is never announced.
    let mut other = s.client("x").await;
    let req = json!({"subscribe": {"channel": "roomh:1", "recover": true, "offset": 5, "epoch": "gone", "flag": 2}});
    assert_eq!(other.cmd(req).await["error"]["code"], 112);
    let r = s.api("presence_stats", json!({"channel": "roomh:1"})).await;
    assert_eq!(r["result"], json!({"num_clients": 2, "num_users": 2}));
    s.api("publish", json!({"channel": "roomh:1", "data": "next"}))
        .await;
    let p = watcher.push().await;
    assert_eq!(
        p["pub"]["data"], "next",
        "no join or leave of the failed subscriber came first: {p}"
    );
    s.stop().await;
}
