//! What an attacker or a broken client might send, and that it hurts no
//! one else.

use serde_json::{json, Value};

use herald_testkit::*;

/// A durable namespace on SQLite, or on PostgreSQL with `db`.
fn durable(db: Option<&TestDatabase>) -> Value {
    let mut cfg = json!({"channel": {"namespaces": [
        { "name": "dur", "history_storage": "durable", "allow_subscribe_for_client": true,
          "allow_publish_for_client": true, "allow_history_for_client": true }
    ]}});
    if let Some(db) = db {
        merge(
            &mut cfg,
            json!({"storage": {"type": "postgres", "postgres": {"url": db.url}}}),
        );
    }
    cfg
}

/// A channel name with a NUL (or any control character) is refused with
/// 107 on every path, and publishers around it are not hurt: on PostgreSQL
/// such a name once failed the whole group commit it joined.
async fn control_characters_in_channel_names(db: Option<&TestDatabase>) {
    let s = TestServer::start(durable(db)).await;
    const GOOD: usize = 200;
    let good = (0..GOOD).map(|n| {
        s.api(
            "publish",
            json!({"channel": format!("dur:good{}", n % 4), "data": {"n": n}}),
        )
    });
    let bad = async {
        let mut ws = s.client("mallory").await;
        for channel in ["dur:a\u{0}b", "dur:a\nb", "dur:\u{7f}"] {
            let r = ws
                .cmd(json!({"publish": {"channel": channel, "data": {}}}))
                .await;
            assert_eq!(r["error"]["code"], 107, "{r}");
            let r = ws.cmd(json!({"subscribe": {"channel": channel}})).await;
            assert_eq!(r["error"]["code"], 107, "{r}");
            for method in ["publish", "history", "presence", "history_remove"] {
                let r = s.api(method, json!({"channel": channel, "data": {}})).await;
                assert_eq!(r["error"]["code"], 107, "{method}: {r}");
            }
        }
    };
    let (replies, ()) = tokio::join!(futures_util::future::join_all(good), bad);
    for r in &replies {
        assert!(r["result"]["offset"].as_u64().is_some(), "{r}");
    }
    let stored: u64 = futures_util::future::join_all(
        (0..4).map(|i| s.api("history", json!({"channel": format!("dur:good{i}")}))),
    )
    .await
    .iter()
    .map(|h| h["result"]["offset"].as_u64().unwrap())
    .sum();
    assert_eq!(stored as usize, GOOD, "every good publication stored once");
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn control_characters_in_channel_names_on_sqlite() {
    control_characters_in_channel_names(None).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn control_characters_in_channel_names_on_postgres() {
    if let Some(db) = TestDatabase::create() {
        control_characters_in_channel_names(Some(&db)).await;
    }
}
