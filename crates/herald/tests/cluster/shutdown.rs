//! A node that stops gracefully: its clients' leaves still reach the other
//! nodes (the broker is closed only after the connections).

use herald_testkit::{merge, ClusterNode};
use serde_json::{json, Value};

use super::{node, nodes_in_info, push_of, subscribe};

pub(crate) async fn leaves_reach_the_others_when_a_node_stops(mut cfg: Value) {
    merge(
        &mut cfg,
        json!({"channel": {"namespaces": [
            {"name": "room", "presence": true, "join_leave": true,
             "force_push_join_leave": true, "allow_subscribe_for_client": true}
        ]}}),
    );
    let mut nodes: Vec<ClusterNode> = ["a", "b"].iter().map(|n| node(n, &cfg)).collect();
    nodes_in_info(&nodes[0], 2).await;
    nodes_in_info(&nodes[1], 2).await;
    let mut stays = nodes[0].client("stays").await;
    subscribe(&mut stays, "room:x").await;
    push_of(&mut stays, "room:x", "join").await;
    let mut goes = nodes[1].client("goes").await;
    subscribe(&mut goes, "room:x").await;
    let join = push_of(&mut stays, "room:x", "join").await;
    assert_eq!(join["join"]["info"]["user"], "goes", "{join}");

    nodes[1].served.signal("TERM");
    assert!(nodes[1].served.wait_exit().success());
    let leave = push_of(&mut stays, "room:x", "leave").await;
    assert_eq!(leave["leave"]["info"]["user"], "goes", "{leave}");
    let r = nodes[0].api("presence", json!({"channel": "room:x"})).await;
    let members = r["presence"].as_object().expect("presence");
    assert_eq!(members.len(), 1, "{r}");
}
