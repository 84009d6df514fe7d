//! Herald's server API blocking a Pusher user: the app's users are
//! `pusher:<app id>:<user id>` there.

use serde_json::json;

use super::{auth, config, established, message, send};
use herald_testkit::*;

/// Signs `ws` (socket `id`) in as `user`.
async fn sign_in(ws: &mut Ws, id: &str, user: &str) {
    let user_data = json!({ "id": user }).to_string();
    let signature = auth(&format!("{id}::user::{user_data}"));
    send(
        ws,
        json!({"event": "pusher:signin", "data": {"auth": signature, "user_data": user_data}}),
    )
    .await;
}

#[tokio::test]
async fn a_blocked_user_is_closed_and_cannot_sign_in_until_unblocked() {
    let s = TestServer::start(config(json!({}))).await;
    let (mut ann, ann_id) = established(&s).await;
    sign_in(&mut ann, &ann_id, "ann").await;
    assert_eq!(message(&mut ann).await.0, "pusher:signin_success");
    let (mut bob, bob_id) = established(&s).await;
    sign_in(&mut bob, &bob_id, "bob").await;
    assert_eq!(message(&mut bob).await.0, "pusher:signin_success");

    let r = s.api("block_user", json!({"user": "pusher:7:ann"})).await;
    assert!(r.get("error").is_none(), "{r}");
    let (event, _, data) = message(&mut ann).await;
    assert_eq!(
        (event.as_str(), &data["code"]),
        ("pusher:error", &json!(4009))
    );
    assert_eq!(ann.closed().await.0, 4009);

    // Signing in again as ann is refused; bob is untouched.
    let (mut again, again_id) = established(&s).await;
    sign_in(&mut again, &again_id, "ann").await;
    assert_eq!(message(&mut again).await.0, "pusher:error");
    assert_eq!(again.closed().await.0, 4009);
    send(&mut bob, json!({"event": "pusher:ping", "data": {}})).await;
    assert_eq!(message(&mut bob).await.0, "pusher:pong");

    let r = s.api("unblock_user", json!({"user": "pusher:7:ann"})).await;
    assert!(r.get("error").is_none(), "{r}");
    let (mut back, back_id) = established(&s).await;
    sign_in(&mut back, &back_id, "ann").await;
    assert_eq!(message(&mut back).await.0, "pusher:signin_success");
    s.stop().await;
}
