//! Server-side subscriptions (from the connection token and the server API)
//! carry their stream position and recover across reconnects.

use serde_json::{json, Value};

use herald_testkit::*;

/// Connects with a token for user `user` and `claims`, sending `subs` (a
/// reconnect's recovery request) with the connect command.
async fn connect_with(s: &TestServer, claims: Value, subs: Value) -> (Ws, Value) {
    let mut ws = Ws::open(&s.ws_url()).await;
    let r = ws
        .cmd(json!({"connect": {"token": token(claims), "subs": subs}}))
        .await;
    assert!(r.get("connect").is_some(), "{r}");
    (ws, r["connect"].clone())
}

async fn publish(s: &TestServer, channel: &str, n: u64) {
    let r = s
        .api("publish", json!({"channel": channel, "data": {"n": n}}))
        .await;
    assert_eq!(r["result"]["offset"], n, "{r}");
}

/// The publication numbers of the next `count` publication pushes.
async fn next_numbers(ws: &mut Ws, count: usize) -> Vec<u64> {
    let mut out = Vec::new();
    while out.len() < count {
        let p = ws.push().await;
        if let Some(n) = p["pub"]["data"]["n"].as_u64() {
            out.push(n);
        }
    }
    out
}

/// The issue's reproduction: a token's channel in a `force_recovery`
/// namespace, a forced reconnect, publications meanwhile, and a reconnect
/// that names the channel in `subs` gets exactly what it missed.
#[tokio::test]
async fn token_subscriptions_recover_what_a_reconnect_missed() {
    let s = TestServer::start(json!({})).await;
    let claims = json!({"sub": "u", "channels": ["hist:x"]});
    let (mut ws, connect) = connect_with(&s, claims.clone(), json!({})).await;
    let sub = &connect["subs"]["hist:x"];
    assert_eq!(
        (sub["recoverable"].clone(), sub["positioned"].clone()),
        (json!(true), json!(true)),
        "{connect}"
    );
    let epoch = sub["epoch"].as_str().expect("an epoch").to_string();
    publish(&s, "hist:x", 1).await;
    assert_eq!(next_numbers(&mut ws, 1).await, [1]);
    let r = s
        .api(
            "disconnect",
            json!({"user": "u", "disconnect": {"code": 4000, "reason": "go away, come back"}}),
        )
        .await;
    assert!(r.get("error").is_none(), "{r}");
    assert_eq!(ws.closed().await.0, 4000);
    publish(&s, "hist:x", 2).await;
    publish(&s, "hist:x", 3).await;

    let asked = json!({"hist:x": {"recover": true, "offset": 1, "epoch": epoch}});
    let (mut ws, connect) = connect_with(&s, claims.clone(), asked).await;
    let sub = &connect["subs"]["hist:x"];
    assert_eq!(sub["recovered"], true, "{connect}");
    assert_eq!(sub["was_recovering"], true, "{connect}");
    assert_eq!(sub["offset"], 3);
    let recovered: Vec<u64> = sub["publications"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["data"]["n"].as_u64().unwrap())
        .collect();
    assert_eq!(recovered, [2, 3]);
    // Live delivery goes on from there, nothing repeated.
    publish(&s, "hist:x", 4).await;
    assert_eq!(next_numbers(&mut ws, 1).await, [4]);

    // A position in a lost epoch cannot be recovered: said plainly.
    let asked = json!({"hist:x": {"recover": true, "offset": 1, "epoch": "gone"}});
    let (_ws, connect) = connect_with(&s, claims, asked).await;
    let sub = &connect["subs"]["hist:x"];
    assert_eq!(
        (sub["recovered"].clone(), sub["was_recovering"].clone()),
        (Value::Null, json!(true)),
        "not recovered (false is left out): {connect}"
    );
    assert!(sub.get("publications").is_none(), "{connect}");
    s.stop().await;
}

/// A token's `override` changes the namespace's options for that
/// subscription; without history nothing is positioned.
#[tokio::test]
async fn token_overrides_and_namespaces_decide_positioning() {
    let s = TestServer::start(json!({})).await;
    let claims = json!({"sub": "u", "subs": {
        "hist:off": {"override": {"force_recovery": {"value": false}}},
        "pos:on": {"override": {"force_positioning": {"value": true}}},
        "pos:off": {},
        "news": {"override": {"force_recovery": {"value": true}}}
    }});
    let (_ws, connect) = connect_with(&s, claims, json!({})).await;
    let subs = &connect["subs"];
    assert_eq!(subs["hist:off"].get("recoverable"), None, "{connect}");
    assert_eq!(subs["pos:on"]["positioned"], true, "{connect}");
    assert!(subs["pos:on"]["epoch"].is_string(), "{connect}");
    assert_eq!(subs["pos:off"], json!({}), "{connect}");
    assert_eq!(
        subs["news"],
        json!({}),
        "no history, no position: {connect}"
    );
    s.stop().await;
}

/// The server API's subscribe pushes the position of a positioned channel.
#[tokio::test]
async fn api_subscriptions_carry_their_position() {
    let s = TestServer::start(json!({})).await;
    let mut ws = s.client("u").await;
    publish(&s, "hist:api", 1).await;
    let r = s
        .api("subscribe", json!({"user": "u", "channel": "hist:api"}))
        .await;
    assert!(r.get("error").is_none(), "{r}");
    let push = ws.push().await;
    let sub = &push["subscribe"];
    assert_eq!(push["channel"], "hist:api", "{push}");
    assert_eq!(
        (
            sub["recoverable"].clone(),
            sub["positioned"].clone(),
            sub["offset"].clone()
        ),
        (json!(true), json!(true), json!(1)),
        "{push}"
    );
    assert!(sub["epoch"].is_string(), "{push}");
    publish(&s, "hist:api", 2).await;
    assert_eq!(next_numbers(&mut ws, 1).await, [2]);
    s.stop().await;
}

/// A server-side subscription whose state became insufficient cannot be
/// resubscribed by the client: the connection closes with 3010, and the
/// SDK reconnects with recovery.
#[tokio::test]
async fn insufficient_state_of_a_server_side_subscription_reconnects() {
    let s = TestServer::start(json!({})).await;
    let (mut ws, _) =
        connect_with(&s, json!({"sub": "u", "channels": ["hist:y"]}), json!({})).await;
    let mut client_side = s.client("v").await;
    let r = client_side
        .cmd(json!({"subscribe": {"channel": "hist:y"}}))
        .await;
    assert!(r.get("subscribe").is_some(), "{r}");
    // What a broker reconnection does to every positioned channel.
    s.node.hub.resync(|_| true);
    assert_eq!(ws.closed().await, (3010, "insufficient state".into()));
    let push = client_side.push().await;
    assert_eq!(
        push["unsubscribe"]["code"], 2500,
        "client-side: resubscribe {push}"
    );
    s.stop().await;
}

/// The server API's subscribe with every option: info and data given in
/// base64, `recover_since` (recovering what was published after that
/// position), and an override of the namespace's options.
#[tokio::test]
async fn api_subscribe_takes_b64_fields_overrides_and_recover_since() {
    use base64::Engine as _;
    let b64 = |text: &str| base64::engine::general_purpose::STANDARD.encode(text);
    let s = TestServer::start(json!({})).await;
    let mut ws = s.client("u").await;
    for n in 1..=3 {
        publish(&s, "hist:since", n).await;
    }
    let first = s.api("history", json!({"channel": "hist:since"})).await;
    let epoch = first["result"]["epoch"].clone();
    let r = s
        .api(
            "subscribe",
            json!({"user": "u", "channel": "hist:since",
                   "b64info": b64(r#"{"role":"guest"}"#), "b64data": b64(r#"{"hello":1}"#),
                   "recover_since": {"offset": 1, "epoch": epoch}}),
        )
        .await;
    assert!(r.get("error").is_none(), "{r}");
    let push = ws.push().await;
    let sub = &push["subscribe"];
    assert_eq!(sub["data"], json!({"hello": 1}), "{push}");
    // A subscribe push has no room for publications: it names the position
    // recovered from, and what was missed follows as publication pushes.
    assert_eq!(sub["offset"], 1, "{push}");
    let mut recovered = Vec::new();
    for _ in 0..2 {
        let p = ws.push().await;
        recovered.push((p["pub"]["offset"].clone(), p["pub"]["data"]["n"].clone()));
    }
    assert_eq!(recovered, [(json!(2), json!(2)), (json!(3), json!(3))]);
    // The channel info given in base64 goes with the client's publications.
    let r = ws
        .cmd(json!({"publish": {"channel": "hist:since", "data": {"n": 4}}}))
        .await;
    assert!(r.get("publish").is_some(), "{r}");
    let p = ws.push().await;
    assert_eq!(
        p["pub"]["info"]["chan_info"],
        json!({"role": "guest"}),
        "{p}"
    );

    // An override: the namespace forces recovery, this subscription not.
    let r = s
        .api(
            "subscribe",
            json!({"user": "u", "channel": "hist:plain",
                   "override": {"force_recovery": {"value": false}}}),
        )
        .await;
    assert!(r.get("error").is_none(), "{r}");
    let push = ws.push().await;
    assert_eq!(push["channel"], "hist:plain", "{push}");
    assert!(push["subscribe"].get("recoverable").is_none(), "{push}");

    // A base64 field that does not hold JSON is a bad request.
    let r = s
        .api(
            "subscribe",
            json!({"user": "u", "channel": "news", "b64data": b64("not json")}),
        )
        .await;
    assert_eq!(r["error"]["code"], 107, "{r}");
    s.stop().await;
}

/// `client.subscribe_to_user_personal_channel`: every connection with a
/// user is subscribed to `<namespace>:#<user>` with that namespace's
/// options; with `single_connection`, a user's new connection closes the
/// older ones with 3504.
#[tokio::test]
async fn connections_join_their_users_personal_channel() {
    let s = TestServer::start(json!({
        "client": {"subscribe_to_user_personal_channel": {
            "enabled": true, "personal_channel_namespace": "hist", "single_connection": true
        }}
    }))
    .await;
    let (mut first, connect) = connect_with(&s, json!({"sub": "ann"}), json!({})).await;
    let sub = &connect["subs"]["hist:#ann"];
    assert_eq!(
        sub["recoverable"], true,
        "the namespace's options: {connect}"
    );
    publish(&s, "hist:#ann", 1).await;
    assert_eq!(next_numbers(&mut first, 1).await, [1]);

    let (mut second, _) = connect_with(&s, json!({"sub": "ann"}), json!({})).await;
    assert_eq!(first.closed().await.0, 3504, "single connection");
    publish(&s, "hist:#ann", 2).await;
    assert_eq!(next_numbers(&mut second, 1).await, [2]);
    // Another user's connection is untouched, and anonymous ones get none.
    let (_other, connect) = connect_with(&s, json!({"sub": "bob"}), json!({})).await;
    assert!(connect["subs"].get("hist:#bob").is_some(), "{connect}");
    assert!(connect["subs"].get("hist:#ann").is_none(), "{connect}");
}

#[tokio::test]
async fn a_personal_channel_namespace_must_exist() {
    let mut cfg = base_config();
    merge(
        &mut cfg,
        json!({"client": {"subscribe_to_user_personal_channel": {
            "enabled": true, "personal_channel_namespace": "nope"
        }}}),
    );
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("config.json");
    std::fs::write(&path, cfg.to_string()).unwrap();
    let Err(err) = herald::config::load(Some(&path), &Default::default(), &Default::default())
    else {
        panic!("a missing personal channel namespace was accepted");
    };
    assert!(
        err.to_string().contains("personal_channel_namespace")
            || format!("{err:?}").contains("personal_channel_namespace"),
        "{err:?}"
    );
}
