//! Delta compression (Fossil), as Centrifugo v6 defines it: subscribers
//! that ask with `delta: "fossil"` in a namespace that allows it, in a
//! positioned or recoverable subscription, get publications the publisher
//! allowed as deltas against the previous one; in JSON all their data are
//! JSON strings. Everyone else is unaffected.

use serde_json::{json, Value};

use herald_testkit::*;

fn namespace(name: &str, extra: Value) -> Value {
    let mut ns = json!({
        "name": name, "history_size": 100, "history_ttl": "300s", "force_recovery": true,
        "allowed_delta_types": ["fossil"], "allow_subscribe_for_client": true
    });
    merge(&mut ns, extra);
    ns
}

async fn server() -> TestServer {
    TestServer::start(json!({"channel": {"namespaces": [
        namespace("dd", json!({})),
        namespace("dp", json!({"delta_publish": true})),
        namespace("plain", json!({"force_recovery": false})),
        {"name": "nohist", "allowed_delta_types": ["fossil"], "allow_subscribe_for_client": true}
    ]}}))
    .await
}

/// A payload that changes little from one `n` to the next.
fn doc(n: u64) -> String {
    let rows: Vec<String> = (0..20)
        .map(|i| format!("\"row {i} of the board\""))
        .collect();
    format!(
        r#"{{"n":{n},"rows":[{}],"tail":"unchanged"}}"#,
        rows.join(",")
    )
}

async fn publish(s: &TestServer, channel: &str, n: u64, delta: bool) {
    let data: Value = serde_json::from_str(&doc(n)).unwrap();
    let r = s
        .api(
            "publish",
            json!({"channel": channel, "data": data, "delta": delta}),
        )
        .await;
    assert!(r.get("error").is_none(), "{r}");
}

/// What a delta subscriber rebuilds from its pushes, as the SDK does.
struct Rebuilt {
    last: Option<String>,
    deltas: usize,
}

impl Rebuilt {
    fn new() -> Self {
        Self {
            last: None,
            deltas: 0,
        }
    }

    /// Applies one publication; returns the payload it stands for.
    fn apply(&mut self, publication: &Value) -> String {
        let text = publication["data"]
            .as_str()
            .unwrap_or_else(|| panic!("a delta subscriber's data is a string: {publication}"));
        let data = if publication["delta"] == json!(true) {
            self.deltas += 1;
            assert!(
                text.len() < doc(0).len(),
                "a delta is smaller than the data"
            );
            let base = self.last.as_ref().expect("a delta needs a base");
            let out =
                fossil_delta::apply(base.as_bytes(), text.as_bytes()).expect("the delta applies");
            String::from_utf8(out).unwrap()
        } else {
            text.to_string()
        };
        self.last = Some(data.clone());
        data
    }
}

async fn subscribe_delta(ws: &mut Ws, channel: &str) -> Value {
    let r = ws
        .cmd(json!({"subscribe": {"channel": channel, "delta": "fossil"}}))
        .await;
    r["subscribe"].clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_delta_subscriber_rebuilds_every_publication_and_others_see_no_change() {
    let s = server().await;
    let mut d = s.client("u1").await;
    let result = subscribe_delta(&mut d, "dd:board").await;
    assert_eq!(result["delta"], json!(true), "{result}");
    let mut plain = s.client("u2").await;
    let r = plain
        .cmd(json!({"subscribe": {"channel": "dd:board"}}))
        .await;
    assert!(r["subscribe"].get("delta").is_none(), "{r}");

    // 1 and 2 allow deltas, 3 does not, 4 does again.
    for (n, delta) in [(1, true), (2, true), (3, false), (4, true)] {
        publish(&s, "dd:board", n, delta).await;
    }
    let mut rebuilt = Rebuilt::new();
    let mut kinds = Vec::new();
    for n in 1..=4 {
        let push = d.push().await;
        let p = &push["pub"];
        kinds.push(p["delta"] == json!(true));
        assert_eq!(p["offset"], n);
        let data = rebuilt.apply(p);
        assert_eq!(serde_json::from_str::<Value>(&data).unwrap()["n"], n);
        assert_eq!(data, doc(n), "rebuilt byte for byte");
        // The other subscriber gets plain JSON, never a delta.
        let other = plain.push().await;
        assert_eq!(other["pub"]["data"]["n"], n, "{other}");
        assert!(other["pub"].get("delta").is_none(), "{other}");
    }
    // The first is whole (no base yet), 3 was not allowed as a delta.
    assert_eq!(kinds, [false, true, false, true]);
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delta_publish_makes_every_publication_of_the_namespace_a_delta() {
    let s = server().await;
    let mut d = s.client("u1").await;
    assert_eq!(
        subscribe_delta(&mut d, "dp:feed").await["delta"],
        json!(true)
    );
    for n in 1..=3 {
        publish(&s, "dp:feed", n, false).await;
    }
    let mut rebuilt = Rebuilt::new();
    for n in 1..=3 {
        assert_eq!(rebuilt.apply(&d.push().await["pub"]), doc(n));
    }
    assert_eq!(rebuilt.deltas, 2);
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recovered_publications_come_whole_and_deltas_resume_after() {
    let s = server().await;
    // Another delta subscriber stays: the channel's last publication is
    // kept for deltas throughout.
    let mut keeper = s.client("u2").await;
    subscribe_delta(&mut keeper, "dd:rec").await;
    let mut d = s.client("u1").await;
    let first = subscribe_delta(&mut d, "dd:rec").await;
    let epoch = first["epoch"].as_str().unwrap().to_string();
    publish(&s, "dd:rec", 1, true).await;
    let mut rebuilt = Rebuilt::new();
    assert_eq!(rebuilt.apply(&d.push().await["pub"]), doc(1));
    d.close().await;

    // Missed while away.
    publish(&s, "dd:rec", 2, true).await;
    publish(&s, "dd:rec", 3, true).await;
    let mut d = s.client("u1").await;
    let r = d
        .cmd(json!({"subscribe": {"channel": "dd:rec", "delta": "fossil",
            "recover": true, "offset": 1, "epoch": epoch}}))
        .await;
    let result = &r["subscribe"];
    assert_eq!(result["recovered"], json!(true), "{r}");
    assert_eq!(result["delta"], json!(true), "{r}");
    let recovered = result["publications"].as_array().unwrap();
    assert_eq!(recovered.len(), 2, "{r}");
    for (p, n) in recovered.iter().zip(2..) {
        assert!(p.get("delta").is_none(), "recovered whole: {p}");
        assert_eq!(rebuilt.apply(p), doc(n), "recovered whole, as strings");
    }
    for n in 4..=6 {
        publish(&s, "dd:rec", n, true).await;
        let p = d.push().await["pub"].clone();
        assert_eq!(
            p["delta"],
            json!(true),
            "a delta against what was recovered: {p}"
        );
        assert_eq!(rebuilt.apply(&p), doc(n));
    }
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deltas_are_not_granted_where_not_allowed_or_not_positioned() {
    let s = server().await;
    let mut c = s.client("u1").await;
    for channel in ["nohist:a", "plain:a"] {
        let r = subscribe_delta(&mut c, channel).await;
        assert!(r.get("delta").is_none(), "{channel}: {r}");
        publish(&s, channel, 1, true).await;
        let push = c.push().await;
        assert_eq!(push["pub"]["data"]["n"], 1, "plain JSON data: {push}");
    }
    // Asking for positioning makes the subscription eligible.
    let r = c
        .cmd(json!({"subscribe": {"channel": "plain:b", "delta": "fossil", "positioned": true}}))
        .await;
    assert!(
        r["subscribe"].get("delta").is_none(),
        "allow_positioning is off: {r}"
    );
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unknown_delta_type_closes_the_connection() {
    let s = server().await;
    let mut c = s.client("u1").await;
    c.send(json!({"subscribe": {"channel": "dd:x", "delta": "xdelta"}}))
        .await;
    assert_eq!(c.closed().await.0, 3501);
    s.stop().await;
}

#[test]
fn an_unknown_delta_type_in_the_config_is_refused() {
    let mut config = base_config();
    merge(
        &mut config,
        json!({"channel": {"namespaces": [{"name": "xx", "allowed_delta_types": ["xdelta"]}]}}),
    );
    let refusal = config_refusal(&config);
    assert!(refusal.contains("allowed_delta_types"), "{refusal}");
}
