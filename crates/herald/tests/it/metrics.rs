//! `/metrics` through prometheus-client: switched on by
//! `prometheus.enabled`, every family described, the figures move with
//! what clients and the server API do, and every expression of the
//! Grafana dashboard in the repository names metrics that really exist.

use std::collections::BTreeSet;

use serde_json::{json, Value};

use herald_testkit::*;

async fn scrape(s: &TestServer) -> (u16, String, String) {
    let r = reqwest::get(s.http("/metrics"))
        .await
        .expect("metrics reachable");
    let status = r.status().as_u16();
    let kind = r
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    (status, kind, r.text().await.unwrap())
}

/// The sample names of an exposition (`name` or `name{labels}` at a line's
/// start).
fn names(text: &str) -> BTreeSet<String> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .filter_map(|l| l.split(['{', ' ']).next())
        .map(str::to_string)
        .collect()
}

/// Some of everything: connections (returned, to stay open),
/// subscriptions with recovery, a publication, an error reply, server API
/// calls.
async fn activity(s: &TestServer) -> Vec<Ws> {
    let mut ws = s.client("mia").await;
    let r = ws.cmd(json!({"subscribe": {"channel": "hist:m"}})).await;
    assert!(r.get("subscribe").is_some(), "{r}");
    let epoch = r["subscribe"]["epoch"].as_str().unwrap().to_string();
    let r = ws.cmd(json!({"subscribe": {"channel": "secret:x"}})).await;
    assert_eq!(r["error"]["code"], 103, "{r}");
    let r = s
        .api("publish", json!({"channel": "hist:m", "data": {"n": 1}}))
        .await;
    assert!(r.get("error").is_none(), "{r}");
    ws.push().await;
    let mut other = s.client("noa").await;
    let r = other
        .cmd(json!({"subscribe": {"channel": "hist:m", "recover": true, "offset": 0, "epoch": epoch}}))
        .await;
    assert_eq!(r["subscribe"]["recovered"], true, "{r}");
    vec![ws, other]
}

#[tokio::test]
async fn every_family_is_described_and_moves_with_what_happens() {
    let s = TestServer::start(json!({})).await;
    let _open = activity(&s).await;
    // A channel without history: straight to the broker.
    let r = s
        .api("publish", json!({"channel": "chat:free", "data": {}}))
        .await;
    assert!(r.get("error").is_none(), "{r}");
    let (status, kind, text) = scrape(&s).await;
    assert_eq!(status, 200);
    assert!(kind.starts_with("application/openmetrics-text"), "{kind}");
    let described: BTreeSet<&str> = text
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.split(' ').next())
        .collect();
    for family in &described {
        assert!(
            text.contains(&format!("# HELP {family} ")),
            "{family} has no HELP"
        );
    }
    for name in names(&text) {
        assert!(
            described.iter().any(|f| name.starts_with(f)),
            "{name} is not described"
        );
    }
    let value = |needle: &str| -> f64 {
        text.lines()
            .find(|l| l.starts_with(needle))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("no {needle} in\n{text}"))
    };
    assert_eq!(value("herald_connections "), 2.0);
    assert_eq!(value("herald_users "), 2.0);
    assert_eq!(
        value(r#"herald_client_reply_errors_total{method="subscribe",code="103"}"#),
        1.0
    );
    assert_eq!(
        value(r#"herald_client_recoveries_total{recovered="yes"}"#),
        1.0
    );
    assert!(value(r#"herald_client_command_duration_seconds_count{method="subscribe"}"#) >= 3.0);
    assert_eq!(
        value(r#"herald_api_request_duration_seconds_count{method="publish",protocol="http"}"#),
        2.0
    );
    assert!(value("herald_transport_messages_received_total ") >= 5.0);
    assert!(value("herald_broker_publish_duration_seconds_count ") >= 1.0);
    assert!(value("herald_transport_bytes_sent_total ") > 100.0);
    assert!(value("process_resident_memory_bytes ") > 1e6);
    assert!(value("process_open_fds ") > 3.0);
    assert!(text.contains(r#"herald_build_info{version=""#));
    assert!(text.trim_end().ends_with("# EOF"));
}

#[tokio::test]
async fn metrics_are_off_unless_switched_on() {
    let s = TestServer::start(json!({"prometheus": {"enabled": false}})).await;
    let (status, _, _) = scrape(&s).await;
    assert_eq!(status, 404);
}

#[tokio::test]
async fn every_dashboard_expression_names_exposed_metrics() {
    let s = TestServer::start(json!({"channel": {"namespaces": [
        {"name": "hist", "history_size": 100, "history_ttl": "300s", "force_recovery": true,
         "allow_subscribe_for_client": true},
        {"name": "secret"},
        {"name": "dur", "history_storage": "durable"},
    ]}}))
    .await;
    let _open = activity(&s).await;
    let r = s
        .api("publish", json!({"channel": "dur:x", "data": {"n": 1}}))
        .await;
    assert!(r.get("error").is_none(), "{r}");
    let exposed = names(&scrape(&s).await.2);
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../deploy/grafana/herald-dashboard.json"
    );
    let dashboard: Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let exprs: Vec<&str> = dashboard["panels"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|p| p["targets"].as_array().unwrap())
        .map(|t| t["expr"].as_str().unwrap())
        .collect();
    assert!(
        exprs.len() >= 20,
        "a dashboard of {} expressions",
        exprs.len()
    );
    let metric = regex::Regex::new(r"\b(?:herald|process)_[a-z0-9_]+").unwrap();
    let mut checked = 0;
    for expr in exprs {
        for name in metric.find_iter(expr).map(|m| m.as_str()) {
            assert!(
                exposed.contains(name),
                "{name} (in `{expr}`) is not exposed"
            );
            checked += 1;
        }
    }
    assert!(checked >= 25, "{checked} names checked");
}

#[tokio::test]
async fn an_internal_port_takes_health_and_metrics_off_the_public_listener() {
    let s = TestServer::start(json!({"http_server": {"internal_port": "0"}})).await;
    let internal = s.internal.expect("an internal listener");
    let get = |url: String| async move { reqwest::get(url).await.unwrap().status().as_u16() };
    for path in ["/metrics", "/health", "/health/live"] {
        assert_eq!(
            get(s.http(path)).await,
            404,
            "{path} on the public listener"
        );
        assert_eq!(
            get(format!("http://{internal}{path}")).await,
            200,
            "{path} inside"
        );
    }
    // Clients and the server API stay on the public one.
    let mut ws = s.client("ivy").await;
    let r = ws.cmd(json!({"subscribe": {"channel": "chat:i"}})).await;
    assert!(r.get("subscribe").is_some(), "{r}");
    assert!(s.api("info", json!({})).await.get("result").is_some());
    assert_eq!(get(format!("http://{internal}/api/info")).await, 404);
}

#[test]
fn a_bad_internal_port_is_refused_naming_the_key() {
    let err = config_refusal(&json!({"http_server": {"internal_port": "90000"}}));
    assert!(err.contains("http_server.internal_port"), "{err}");
}

#[tokio::test]
async fn messages_sent_are_counted_by_type_and_http_streams_by_bytes() {
    let s = TestServer::start(json!({"uni_sse": {"enabled": true}})).await;
    let sent = |kind: &str| format!("herald_client_messages_sent_total{{type=\"{kind}\"}}");
    let mut a = s.client("ann").await;
    let r = a
        .cmd(json!({"subscribe": {"channel": "room:m", "join_leave": true}}))
        .await;
    assert!(r.get("subscribe").is_some(), "{r}");
    let mut b = s.client("ben").await;
    let r = b.cmd(json!({"subscribe": {"channel": "room:m"}})).await;
    assert!(r.get("subscribe").is_some(), "{r}");
    // Ann hears Ben join (both asked for join/leave by the namespace).
    a.push().await;
    s.api("publish", json!({"channel": "room:m", "data": {"n": 1}}))
        .await;
    a.push().await;
    b.push().await;
    assert_eq!(s.metric(&sent("publication")).await, 2);
    assert!(s.metric(&sent("join")).await >= 1);
    assert_eq!(s.metric(&sent("leave")).await, 0);

    // A Server-Sent Events client's pushes count as messages and bytes.
    let before = s.metric("herald_transport_bytes_sent_total").await;
    let connect = json!({"token": token(json!({"sub": "sse", "channels": ["room:m"]}))});
    let url = format!(
        "{}?cf_connect={}",
        s.http("/connection/uni_sse"),
        crate::uni::url_encode(&connect.to_string())
    );
    let mut events = Pushes::open(reqwest::Client::new().get(url), b"\n\n").await;
    assert!(events.next().await.unwrap().get("connect").is_some());
    assert!(s.metric("herald_transport_bytes_sent_total").await > before);
    s.stop().await;
}
