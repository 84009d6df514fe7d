//! Watchlist events: a socket signed in with a watchlist hears which of
//! its users are online, and when they come online or go offline (their
//! first socket signed in, their last one gone).

use serde_json::{json, Value};

use super::{auth, config, established, message, nothing_more, send};
use herald_testkit::*;

/// A socket signed in as `user` with `watchlist` (none: `Value::Null`).
async fn signed_in(s: &TestServer, user: &str, watchlist: Value) -> Ws {
    let (mut ws, id) = established(s).await;
    let mut user_data = json!({ "id": user });
    if !watchlist.is_null() {
        user_data["watchlist"] = watchlist;
    }
    let user_data = user_data.to_string();
    let signature = auth(&format!("{id}::user::{user_data}"));
    let signin = json!({"event": "pusher:signin",
                        "data": {"auth": signature, "user_data": user_data}});
    send(&mut ws, signin).await;
    assert_eq!(message(&mut ws).await.0, "pusher:signin_success");
    ws
}

/// The next message, which must be watchlist events: `data.events`.
async fn watchlist_events(ws: &mut Ws) -> Value {
    let (event, channel, data) = message(ws).await;
    assert_eq!(
        (event.as_str(), channel),
        ("pusher_internal:watchlist_events", None),
        "{data}"
    );
    data["events"].clone()
}

fn watching() -> Value {
    config(json!({ "enable_watchlist_events": true }))
}

#[tokio::test]
async fn a_watcher_hears_its_users_come_online_and_go_offline() {
    let s = TestServer::start(watching()).await;
    let mut bob = signed_in(&s, "bob", Value::Null).await;
    let mut ann = signed_in(&s, "ann", json!(["bob", "cy", 42])).await;
    // First, who is online and who is not.
    assert_eq!(
        watchlist_events(&mut ann).await,
        json!([{"name": "online", "user_ids": ["bob"]},
               {"name": "offline", "user_ids": ["42", "cy"]}])
    );
    // cy's first socket: online; a second one: nothing new.
    let cy = signed_in(&s, "cy", Value::Null).await;
    assert_eq!(
        watchlist_events(&mut ann).await,
        json!([{"name": "online", "user_ids": ["cy"]}])
    );
    let cy_again = signed_in(&s, "cy", Value::Null).await;
    nothing_more(&mut ann).await;
    // Only the last of cy's sockets going makes cy offline.
    cy.close().await;
    wait_until("cy's first socket gone", || s.node.hub.num_clients() == 3).await;
    nothing_more(&mut ann).await;
    drop(cy_again);
    assert_eq!(
        watchlist_events(&mut ann).await,
        json!([{"name": "offline", "user_ids": ["cy"]}])
    );
    // Someone not watched comes and goes unheard; bob never hears of ann.
    let dan = signed_in(&s, "dan", Value::Null).await;
    drop(dan);
    nothing_more(&mut ann).await;
    nothing_more(&mut bob).await;
    bob.close().await;
    assert_eq!(
        watchlist_events(&mut ann).await,
        json!([{"name": "offline", "user_ids": ["bob"]}])
    );
    s.stop().await;
}

#[tokio::test]
async fn watchlists_need_the_option_and_a_list_of_at_most_100() {
    // Without enable_watchlist_events: signed in, told nothing.
    let s = TestServer::start(config(json!({}))).await;
    let _bob = signed_in(&s, "bob", Value::Null).await;
    let mut ann = signed_in(&s, "ann", json!(["bob"])).await;
    nothing_more(&mut ann).await;
    s.stop().await;

    let s = TestServer::start(watching()).await;
    let hundred: Vec<String> = (0..100).map(|i| format!("u{i}")).collect();
    let mut full = signed_in(&s, "ann", json!(hundred)).await;
    let events = watchlist_events(&mut full).await;
    assert_eq!(events[0]["name"], "offline");
    assert_eq!(events[0]["user_ids"].as_array().unwrap().len(), 100);
    // One more, or not a list: signed in all the same, told why, watching
    // no one.
    let over: Vec<String> = (0..101).map(|i| format!("u{i}")).collect();
    for bad in [json!(over), json!("bob"), json!([{"id": "bob"}])] {
        let mut ws = signed_in(&s, "eve", bad).await;
        let (event, _, data) = message(&mut ws).await;
        assert_eq!(event, "pusher:error", "{data}");
        assert!(
            data["message"].as_str().unwrap().contains("watchlist"),
            "{data}"
        );
        let _u0 = signed_in(&s, "u0", Value::Null).await;
        nothing_more(&mut ws).await;
    }
    s.stop().await;
}
