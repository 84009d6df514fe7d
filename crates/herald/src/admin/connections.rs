//! `connections`: who is connected to this node — client id, user,
//! transport, format and channels — for the UI's connection inspector.

use serde::{Deserialize, Serialize};

use crate::api::ApiError;
use crate::node::Node;

/// The most connections one answer lists.
const MOST: usize = 1000;

#[derive(Deserialize, Default)]
#[serde(default)]
struct Request {
    /// Only this user's connections.
    user: Option<String>,
    /// Only connections whose client id, user or a channel contains this.
    search: String,
}

#[derive(Serialize)]
pub struct Listed {
    /// How many matched (the list stops at a thousand).
    total: usize,
    connections: Vec<Connection>,
}

#[derive(Serialize)]
struct Connection {
    client: String,
    user: String,
    transport: &'static str,
    protocol: &'static str,
    channels: Vec<String>,
}

pub fn list(node: &Node, body: &[u8]) -> Result<Listed, ApiError> {
    let req: Request = serde_json::from_slice(body)
        .map_err(|e| ApiError::bad_request(format!("malformed request: {e}")))?;
    let channels = node.hub.channels_by_client();
    let clients = match &req.user {
        Some(user) => node.hub.user_clients(user),
        None => node.hub.all_clients(),
    };
    let mut found: Vec<Connection> = clients
        .iter()
        .map(|c| {
            let mut subscribed: Vec<String> = channels
                .get(&c.key())
                .map(|list| list.iter().map(|ch| ch.to_string()).collect())
                .unwrap_or_default();
            subscribed.sort();
            Connection {
                client: c.client_id().to_string(),
                user: c.user().to_string(),
                transport: c.transport(),
                protocol: c.protocol(),
                channels: subscribed,
            }
        })
        .filter(|c| {
            req.search.is_empty()
                || c.client.contains(&req.search)
                || c.user.contains(&req.search)
                || c.channels.iter().any(|ch| ch.contains(&req.search))
        })
        .collect();
    found.sort_by(|a, b| (&a.user, &a.client).cmp(&(&b.user, &b.client)));
    let total = found.len();
    found.truncate(MOST);
    Ok(Listed {
        total,
        connections: found,
    })
}
