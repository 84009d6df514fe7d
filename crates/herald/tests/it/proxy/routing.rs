//! Which proxy a call goes to, and over which connection: named proxies of
//! the `proxies` list chosen by namespaces, RPC methods routed by
//! `rpc.namespace_boundary`, HTTP connections kept alive between calls.

use serde_json::{json, Value};

use herald_testkit::*;

use super::backend::Backend;
use super::{connect_as, script, server};

/// The backend the named proxies call: every answer says it came from
/// here. Its subscriptions expire in a second, for the server to refresh.
fn other_script(call: &str, body: &Value) -> (u16, Value) {
    match call {
        "subscribe" => (
            200,
            json!({"result": {"data": {"by": "other", "ch": body["channel"]}, "expire_at": now() + 1}}),
        ),
        "publish" => (
            200,
            json!({"result": {"data": {"by": "other", "was": body["data"]}}}),
        ),
        "sub_refresh" => (
            200,
            json!({"result": {"expire_at": now() + 3600, "info": {"by": "other"}}}),
        ),
        "rpc" => (
            200,
            json!({"result": {"data": {"by": "other", "method": body["method"]}}}),
        ),
        _ => (404, json!({})),
    }
}

#[tokio::test]
async fn named_proxies_serve_the_namespaces_that_name_them() {
    let backend = Backend::new(script);
    let addr = backend.serve_http().await;
    let other = Backend::new(other_script);
    let other_addr = other.serve_http().await;
    let named = |name: &str, call: &str| json!({"name": name, "endpoint": format!("http://{other_addr}/{call}"), "timeout": "1s"});
    let s = server(
        &format!("http://{addr}"),
        json!({
            "proxies": [
                named("o-sub", "subscribe"), named("o-pub", "publish"),
                named("o-sr", "sub_refresh"), named("o-rpc", "rpc"),
            ],
            "channel": {"namespaces": [
                {"name": "chat", "allow_subscribe_for_client": true},
                {"name": "room", "presence": true},
                {"name": "px", "subscribe_proxy_enabled": true, "subscribe_proxy_name": "o-sub",
                 "publish_proxy_enabled": true, "publish_proxy_name": "o-pub",
                 "sub_refresh_proxy_enabled": true, "sub_refresh_proxy_name": "o-sr"},
            ]},
            "rpc": {
                "namespace_boundary": ".",
                "namespaces": [{"name": "ext", "proxy_enabled": true, "proxy_name": "o-rpc"},
                               {"name": "off"}],
            },
        }),
    )
    .await;
    let (mut ws, _) = connect_as(&s, json!({"as": "alice"})).await;
    let r = ws.cmd(json!({"subscribe": {"channel": "px:n"}})).await;
    assert_eq!(
        r["subscribe"]["data"],
        json!({"by": "other", "ch": "px:n"}),
        "{r}"
    );
    assert!(
        r["subscribe"].get("expires").is_none(),
        "the server refreshes it: {r}"
    );
    let r = ws
        .cmd(json!({"publish": {"channel": "px:n", "data": {"text": "hi"}}}))
        .await;
    assert!(r.get("publish").is_some(), "{r}");
    assert_eq!(
        ws.push().await["pub"]["data"],
        json!({"by": "other", "was": {"text": "hi"}})
    );
    eventually("the subscription refreshed by the named proxy", || async {
        !other.calls("sub_refresh").is_empty()
    })
    .await;
    assert_eq!(other.calls("sub_refresh")[0].body["channel"], "px:n");
    let r = ws
        .cmd(json!({"publish": {"channel": "px:n", "data": {"text": "again"}}}))
        .await;
    assert!(r.get("publish").is_some(), "{r}");
    let push = ws.push().await;
    assert_eq!(
        push["pub"]["info"]["chan_info"],
        json!({"by": "other"}),
        "{push}"
    );
    for call in ["subscribe", "publish", "sub_refresh"] {
        assert!(backend.calls(call).is_empty(), "{call} went to the default");
    }

    // With "." as the boundary, `ext.sum` is of namespace ext (its named
    // proxy), `ext:sum` of none (the default proxy).
    let r = ws
        .cmd(json!({"rpc": {"method": "ext.sum", "data": {}}}))
        .await;
    assert_eq!(
        r["rpc"]["data"],
        json!({"by": "other", "method": "ext.sum"}),
        "{r}"
    );
    let r = ws
        .cmd(json!({"rpc": {"method": "ext:sum", "data": {}}}))
        .await;
    assert_eq!(
        r["rpc"]["data"],
        json!({"method": "ext:sum", "echo": {}}),
        "{r}"
    );
    let r = ws
        .cmd(json!({"rpc": {"method": "off.x", "data": {}}}))
        .await;
    assert_eq!(
        r["error"]["code"], 108,
        "a namespace without its proxy: {r}"
    );
    let r = ws
        .cmd(json!({"rpc": {"method": "nowhere.x", "data": {}}}))
        .await;
    assert_eq!(r["error"]["code"], 104, "{r}");
    assert_eq!(other.calls("rpc").len(), 1);
    assert_eq!(backend.calls("rpc").len(), 1);
}

#[tokio::test]
async fn http_proxy_calls_reuse_kept_alive_connections() {
    let backend = Backend::new(script);
    let addr = backend.serve_http().await;
    let s = server(&format!("http://{addr}"), json!({})).await;
    let mut clients = Vec::new();
    for _ in 0..3 {
        let (ws, reply) = connect_as(&s, json!({"as": "alice"})).await;
        assert!(reply.get("connect").is_some(), "{reply}");
        clients.push(ws);
    }
    for n in 0..5 {
        let r = clients[0]
            .cmd(json!({"rpc": {"method": "m", "data": {"n": n}}}))
            .await;
        assert_eq!(r["rpc"]["data"]["echo"], json!({ "n": n }), "{r}");
    }
    assert_eq!(backend.calls("connect").len(), 3);
    assert_eq!(backend.calls("rpc").len(), 5);
    // One connection per proxy (connect, rpc), kept alive between calls;
    // one more is allowed for a call made as the pool took a connection
    // back, never one per call.
    let opened = backend.connections();
    assert!(
        (2..=3).contains(&opened),
        "{opened} connections for 8 calls of two proxies"
    );
}
