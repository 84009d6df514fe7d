//! Streams over the protocol: offsets on publications, positions on
//! subscribe, recovery after missing publications (complete or not at all),
//! history paging, and the server API's history methods.

use bytes::Bytes;
use serde_json::{json, Value};

use herald_testkit::*;

async fn publish_n(s: &TestServer, channel: &str, from: u64, to: u64) -> Value {
    let mut last = Value::Null;
    for n in from..=to {
        last = s
            .api("publish", json!({"channel": channel, "data": {"n": n}}))
            .await;
    }
    last
}

fn offsets(pubs: &Value) -> Vec<u64> {
    pubs.as_array()
        .map(|a| a.iter().map(|p| p["offset"].as_u64().unwrap()).collect())
        .unwrap_or_default()
}

#[tokio::test]
async fn publications_carry_offsets_and_subscribe_reports_position() {
    let s = TestServer::start(json!({})).await;
    let r = publish_n(&s, "hist:a", 1, 2).await;
    assert_eq!(r["result"]["offset"], 2, "{r}");
    let epoch = r["result"]["epoch"].as_str().unwrap().to_string();
    let mut ws = s.client("u").await;
    let r = ws.cmd(json!({"subscribe": {"channel": "hist:a"}})).await;
    let sub = &r["subscribe"];
    assert_eq!(
        (sub["recoverable"].as_bool(), sub["positioned"].as_bool()),
        (Some(true), Some(true)),
        "{r}"
    );
    assert_eq!(
        (sub["offset"].as_u64(), sub["epoch"].as_str()),
        (Some(2), Some(epoch.as_str()))
    );
    assert!(sub.get("publications").is_none(), "not recovering: {r}");
    publish_n(&s, "hist:a", 3, 3).await;
    let p = ws.push().await;
    assert_eq!(
        (p["pub"]["offset"].as_u64(), p["pub"]["data"]["n"].as_u64()),
        (Some(3), Some(3))
    );
    s.stop().await;
}

#[tokio::test]
async fn recovery_returns_exactly_the_missed_publications() {
    let s = TestServer::start(json!({})).await;
    publish_n(&s, "hist:r", 1, 5).await;
    let mut ws = s.client("u").await;
    let r = ws.cmd(json!({"subscribe": {"channel": "hist:r"}})).await;
    let epoch = r["subscribe"]["epoch"].clone();
    ws.cmd(json!({"unsubscribe": {"channel": "hist:r"}})).await;
    publish_n(&s, "hist:r", 6, 9).await;
    let r = ws.cmd(json!({"subscribe": {"channel": "hist:r", "recover": true, "offset": 5, "epoch": epoch}})).await;
    let sub = &r["subscribe"];
    assert_eq!(
        (sub["recovered"].as_bool(), sub["was_recovering"].as_bool()),
        (Some(true), Some(true)),
        "{r}"
    );
    assert_eq!(offsets(&sub["publications"]), vec![6, 7, 8, 9]);
    assert_eq!(sub["publications"][0]["data"], json!({"n": 6}));
    assert_eq!(sub["offset"], 9);

    ws.cmd(json!({"unsubscribe": {"channel": "hist:r"}})).await;
    let r = ws.cmd(json!({"subscribe": {"channel": "hist:r", "recover": true, "offset": 9, "epoch": epoch}})).await;
    assert_eq!(
        r["subscribe"]["recovered"], true,
        "nothing missed is a full recovery: {r}"
    );
    assert!(r["subscribe"].get("publications").is_none());
    s.stop().await;
}

#[tokio::test]
async fn recovery_is_never_partial() {
    let s = TestServer::start(json!({})).await;
    let r = publish_n(&s, "small:x", 1, 1).await;
    let epoch = r["result"]["epoch"].clone();
    publish_n(&s, "small:x", 2, 6).await; // the window keeps 4..=6
    let mut ws = s.client("u").await;
    let r = ws.cmd(json!({"subscribe": {"channel": "small:x", "recover": true, "offset": 1, "epoch": epoch}})).await;
    let sub = &r["subscribe"];
    assert_eq!(
        (sub["recovered"].as_bool(), sub["was_recovering"].as_bool()),
        (None, Some(true)),
        "{r}"
    );
    assert!(sub.get("publications").is_none(), "{r}");
    assert_eq!(sub["offset"], 6);
    ws.cmd(json!({"unsubscribe": {"channel": "small:x"}})).await;
    let r = ws.cmd(json!({"subscribe": {"channel": "small:x", "recover": true, "offset": 3, "epoch": "other"}})).await;
    assert!(
        r["subscribe"].get("recovered").is_none(),
        "a lost epoch cannot recover: {r}"
    );
    assert_eq!(r["subscribe"]["epoch"], epoch);
    ws.cmd(json!({"unsubscribe": {"channel": "small:x"}})).await;
    let req = json!({"subscribe": {"channel": "small:x", "recover": true, "offset": 1, "epoch": epoch, "flag": 2}});
    let r = ws.cmd(req).await;
    assert_eq!(
        r["error"]["code"], 112,
        "flag 2 asks for an error instead: {r}"
    );
    let r = ws.cmd(json!({"subscribe": {"channel": "small:x"}})).await;
    assert!(
        r.get("subscribe").is_some(),
        "the failed subscribe left no subscription behind: {r}"
    );
    s.stop().await;
}

#[tokio::test]
async fn cache_recovery_returns_the_latest_publication() {
    let s = TestServer::start(json!({})).await;
    let r = publish_n(&s, "cache:c", 1, 4).await;
    let mut ws = s.client("u").await;
    let req = json!({"subscribe": {"channel": "cache:c", "recover": true, "offset": 0, "epoch": r["result"]["epoch"]}});
    let r = ws.cmd(req).await;
    assert_eq!(r["subscribe"]["recovered"], true, "{r}");
    assert_eq!(offsets(&r["subscribe"]["publications"]), vec![4]);
    s.stop().await;
}

#[tokio::test]
async fn positioning_is_opt_in_where_allowed() {
    let s = TestServer::start(json!({})).await;
    let mut ws = s.client("u").await;
    let r = ws.cmd(json!({"subscribe": {"channel": "pos:a"}})).await;
    assert_eq!(r["subscribe"], json!({}), "{r}");
    let r = ws
        .cmd(json!({"subscribe": {"channel": "pos:b", "positioned": true}}))
        .await;
    assert_eq!(r["subscribe"]["positioned"], true, "{r}");
    assert!(r["subscribe"]["epoch"].is_string());
    s.stop().await;
}

#[tokio::test]
async fn history_command_pages_both_ways() {
    let s = TestServer::start(json!({})).await;
    let r = publish_n(&s, "hist:h", 1, 10).await;
    let epoch = r["result"]["epoch"].clone();
    let mut ws = s.client("u").await;
    let r = ws
        .cmd(json!({"history": {"channel": "hist:h", "limit": 3}}))
        .await;
    assert_eq!(
        r["error"]["code"], 103,
        "history needs a subscription here: {r}"
    );
    ws.cmd(json!({"subscribe": {"channel": "hist:h"}})).await;
    let page = |r: Value| offsets(&r["history"]["publications"]);
    assert_eq!(
        page(
            ws.cmd(json!({"history": {"channel": "hist:h", "limit": 3}}))
                .await
        ),
        vec![1, 2, 3]
    );
    let since = json!({"offset": 3, "epoch": epoch});
    assert_eq!(
        page(
            ws.cmd(json!({"history": {"channel": "hist:h", "limit": 3, "since": since}}))
                .await
        ),
        vec![4, 5, 6]
    );
    assert_eq!(
        page(
            ws.cmd(json!({"history": {"channel": "hist:h", "limit": 2, "reverse": true}}))
                .await
        ),
        vec![10, 9]
    );
    let since = json!({"offset": 9, "epoch": epoch});
    let r = ws
        .cmd(json!({"history": {"channel": "hist:h", "limit": 2, "reverse": true, "since": since}}))
        .await;
    assert_eq!(page(r), vec![8, 7]);
    let r = ws.cmd(json!({"history": {"channel": "hist:h"}})).await;
    assert_eq!(
        (
            r["history"]["offset"].as_u64(),
            r["history"]["epoch"].clone()
        ),
        (Some(10), epoch.clone()),
        "{r}"
    );
    assert!(
        r["history"].get("publications").is_none(),
        "no limit: position only"
    );
    let r = ws.cmd(json!({"history": {"channel": "hist:h", "limit": 1, "since": {"offset": 1, "epoch": "x"}}})).await;
    assert_eq!(r["error"]["code"], 112, "{r}");
    let r = ws
        .cmd(json!({"history": {"channel": "chat:none", "limit": 1}}))
        .await;
    assert_eq!(r["error"]["code"], 108, "{r}");
    s.stop().await;
}

#[tokio::test]
async fn api_history_and_history_remove() {
    let s = TestServer::start(json!({})).await;
    publish_n(&s, "hist:api", 1, 3).await;
    let r = s
        .api("history", json!({"channel": "hist:api", "limit": -1}))
        .await;
    assert_eq!(offsets(&r["result"]["publications"]), vec![1, 2, 3], "{r}");
    assert_eq!(r["result"]["publications"][2]["data"], json!({"n": 3}));
    s.api("history_remove", json!({"channel": "hist:api"}))
        .await;
    let r = s
        .api("history", json!({"channel": "hist:api", "limit": -1}))
        .await;
    assert!(offsets(&r["result"]["publications"]).is_empty(), "{r}");
    assert_eq!(r["result"]["offset"], 3, "the position survives removal");
    let r = s
        .api("history", json!({"channel": "news", "limit": 1}))
        .await;
    assert_eq!(r["error"]["code"], 108);
    s.stop().await;
}

#[tokio::test]
async fn recovering_while_publications_flow_loses_and_repeats_nothing() {
    let s = TestServer::start(json!({})).await;
    let r = publish_n(&s, "hist:flow", 1, 1).await;
    let epoch = r["result"]["epoch"].clone();
    let node = s.node.clone();
    let publisher = tokio::spawn(async move {
        for n in 2..=400u32 {
            node.publish("hist:flow", Bytes::from(n.to_string()), Default::default())
                .await
                .unwrap();
            if n % 20 == 0 {
                tokio::task::yield_now().await;
            }
        }
    });
    let mut ws = s.client("u").await;
    let r = ws.cmd(json!({"subscribe": {"channel": "hist:flow", "recover": true, "offset": 1, "epoch": epoch}})).await;
    let sub = &r["subscribe"];
    assert_eq!(sub["recovered"], true, "{r}");
    let mut seen = offsets(&sub["publications"]);
    publisher.await.unwrap();
    while seen.last().copied().unwrap_or(1) < 400 {
        let p = ws.push().await;
        seen.push(p["pub"]["offset"].as_u64().unwrap());
    }
    let expected: Vec<u64> = (2..=400).collect();
    assert_eq!(seen, expected, "every publication once, in order");
    s.stop().await;
}
