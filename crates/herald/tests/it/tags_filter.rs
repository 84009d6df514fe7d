//! Publication filters by tags (`tf` in subscribe, where the namespace has
//! `allow_tags_filter`): live publications and recovered ones alike reach
//! a subscriber only when their tags pass its filter; a filter where none
//! is allowed, or a malformed one, closes the connection (3501).

use serde_json::{json, Value};

use herald_testkit::*;

fn config() -> Value {
    json!({"channel": {"namespaces": [
        {"name": "tf", "allow_subscribe_for_client": true, "allow_tags_filter": true,
         "history_size": 20, "history_ttl": "300s", "force_recovery": true},
        {"name": "plain", "allow_subscribe_for_client": true}
    ]}})
}

async fn publish(s: &TestServer, channel: &str, n: u64, team: &str) {
    let body =
        json!({"channel": channel, "data": {"n": n}, "tags": {"team": team, "n": n.to_string()}});
    let r = s.api("publish", body).await;
    assert!(r.get("error").is_none(), "{r}");
}

#[tokio::test]
async fn only_publications_whose_tags_pass_reach_the_subscriber() {
    let s = TestServer::start(config()).await;
    let mut eng = s.client("eng").await;
    let mut all = s.client("all").await;
    // team = eng and n > 2, or team = ops.
    let tf = json!({"op": "or", "nodes": [
        {"op": "and", "nodes": [
            {"key": "team", "cmp": "eq", "val": "eng"},
            {"key": "n", "cmp": "gt", "val": "2"}]},
        {"key": "team", "cmp": "eq", "val": "ops"}]});
    let r = eng
        .cmd(json!({"subscribe": {"channel": "tf:news", "tf": tf}}))
        .await;
    let epoch = r["subscribe"]["epoch"].clone();
    assert!(r["subscribe"]["recoverable"] == true, "{r}");
    let r = all.cmd(json!({"subscribe": {"channel": "tf:news"}})).await;
    assert!(r.get("subscribe").is_some(), "{r}");
    for (n, team) in [(1, "eng"), (2, "ops"), (3, "sales"), (4, "eng")] {
        publish(&s, "tf:news", n, team).await;
    }
    let mut got = Vec::new();
    for _ in 0..2 {
        got.push(eng.push().await["pub"]["data"]["n"].clone());
    }
    assert_eq!(got, [json!(2), json!(4)]);
    for n in 1..=4 {
        assert_eq!(all.push().await["pub"]["data"]["n"], n, "no filter: all");
    }

    // Recovery passes the same filter: 5..=8 missed, only 5 and 8 pass.
    eng.close().await;
    for (n, team) in [(5, "ops"), (6, "hr"), (7, "sales"), (8, "eng")] {
        publish(&s, "tf:news", n, team).await;
    }
    let mut eng = s.client("eng").await;
    let r = eng
        .cmd(
            json!({"subscribe": {"channel": "tf:news", "tf": tf, "recover": true,
                                  "offset": 4, "epoch": epoch}}),
        )
        .await;
    assert_eq!(r["subscribe"]["recovered"], true, "{r}");
    let recovered: Vec<Value> = r["subscribe"]["publications"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["data"]["n"].clone())
        .collect();
    assert_eq!(recovered, [json!(5), json!(8)]);
    s.stop().await;
}

#[tokio::test]
async fn filters_where_none_is_allowed_or_malformed_close_the_connection() {
    let s = TestServer::start(config()).await;
    for (channel, tf) in [
        ("plain:x", json!({"key": "team", "cmp": "eq", "val": "eng"})),
        ("tf:x", json!({"key": "team", "cmp": "like", "val": "eng"})),
        ("tf:x", json!({"op": "not", "nodes": []})),
        ("tf:x", json!({"key": "team", "cmp": "in", "val": "eng"})),
    ] {
        let mut ws = s.client("u").await;
        ws.send(json!({"id": 1, "subscribe": {"channel": channel, "tf": tf}}))
            .await;
        assert_eq!(ws.closed().await.0, 3501, "{channel} {tf}");
    }
    s.stop().await;
}
