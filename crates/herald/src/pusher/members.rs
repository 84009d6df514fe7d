//! Who a Pusher socket knows to be in each presence channel it joined.
//! Pusher speaks of users (a member is a user id, however many sockets it
//! has there) while presence events are per connection: a user's first
//! connection in the channel is `member_added`, its last one gone is
//! `member_removed`. Events that arrive while the channel's members are
//! being read are held and applied after, so none is lost or doubled.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;

use herald_protocol::PresenceEvent;
use serde_json::value::RawValue;

use crate::presence;

#[derive(Default)]
pub struct Members {
    channels: HashMap<String, Channel>,
}

#[derive(Default)]
struct Channel {
    /// Events held while the members are read; `None` once read.
    held: Option<Vec<Arc<PresenceEvent>>>,
    /// Each user's connections in the channel.
    users: HashMap<String, HashSet<String>>,
}

impl Channel {
    /// Applies an event; true when it adds or removes a user.
    fn apply(&mut self, e: &PresenceEvent) -> bool {
        let (user, client) = (&e.info.user, &e.info.client);
        if e.join {
            let clients = self.users.entry(user.clone()).or_default();
            clients.insert(client.clone()) && clients.len() == 1
        } else {
            let Some(clients) = self.users.get_mut(user) else {
                return false;
            };
            if !clients.remove(client) || !clients.is_empty() {
                return false;
            }
            self.users.remove(user);
            true
        }
    }
}

impl Members {
    /// The channel is being joined: hold its events until
    /// [`Members::loaded`].
    pub fn start(&mut self, channel: &str) {
        self.channels.insert(
            channel.to_string(),
            Channel {
                held: Some(Vec::new()),
                users: HashMap::new(),
            },
        );
    }

    /// Whether the socket `own` should be told of `e`: not of its own
    /// joins and leaves, nor of a user's second connection.
    pub fn event(&mut self, e: &Arc<PresenceEvent>, own: &str) -> bool {
        if e.info.client == own {
            return false;
        }
        let Some(ch) = self.channels.get_mut(&*e.channel) else {
            return false;
        };
        match &mut ch.held {
            Some(held) => {
                held.push(e.clone());
                false
            }
            None => ch.apply(e),
        }
    }

    /// The channel's members as read (`snapshot`): the
    /// `subscription_succeeded` data (`{"presence":{"ids","hash","count"}}`),
    /// and the held events to tell the socket of now.
    pub fn loaded(
        &mut self,
        channel: &str,
        snapshot: &presence::Members,
        own: &str,
    ) -> (String, Vec<Arc<PresenceEvent>>) {
        let ch = self.channels.entry(channel.to_string()).or_default();
        let mut infos: BTreeMap<&str, &RawValue> = BTreeMap::new();
        for info in snapshot.values() {
            ch.users
                .entry(info.user.clone())
                .or_default()
                .insert(info.client.clone());
            let user_info = info
                .chan_info
                .as_ref()
                .and_then(|b| serde_json::from_slice::<&RawValue>(b).ok());
            let null: &RawValue = serde_json::from_str("null").expect("null is JSON");
            infos.entry(&info.user).or_insert(user_info.unwrap_or(null));
        }
        let data = serde_json::json!({
            "presence": {
                "ids": infos.keys().collect::<Vec<_>>(),
                "hash": infos,
                "count": infos.len(),
            }
        })
        .to_string();
        let held = ch.held.take().unwrap_or_default();
        let tell = held
            .into_iter()
            .filter(|e| e.info.client != own && ch.apply(e))
            .collect();
        (data, tell)
    }

    pub fn leave(&mut self, channel: &str) {
        self.channels.remove(channel);
    }
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;
    use herald_protocol::ClientInfo;

    use super::*;

    fn info(user: &str, client: &str) -> Arc<ClientInfo> {
        Arc::new(ClientInfo {
            user: user.into(),
            client: client.into(),
            conn_info: None,
            chan_info: Some(Bytes::from(format!("{{\"name\":\"{user}\"}}"))),
        })
    }

    fn event(user: &str, client: &str, join: bool) -> Arc<PresenceEvent> {
        Arc::new(PresenceEvent::new(
            Arc::from("a:presence-r"),
            info(user, client),
            join,
        ))
    }

    #[test]
    fn users_come_and_go_with_their_first_and_last_connection() {
        let mut m = Members::default();
        m.start("a:presence-r");
        // Held while loading: one already in the snapshot, one not.
        assert!(!m.event(&event("ann", "c1", true), "me"));
        assert!(!m.event(&event("bob", "c3", true), "me"));
        let snapshot: presence::Members = [
            ("me".to_string(), info("zed", "me")),
            ("c1".to_string(), info("ann", "c1")),
            ("c2".to_string(), info("ann", "c2")),
        ]
        .into_iter()
        .collect();
        let (data, tell) = m.loaded("a:presence-r", &snapshot, "me");
        let v: serde_json::Value = serde_json::from_str(&data).unwrap();
        assert_eq!(v["presence"]["count"], 2);
        assert_eq!(v["presence"]["ids"], serde_json::json!(["ann", "zed"]));
        assert_eq!(v["presence"]["hash"]["ann"]["name"], "ann");
        // Bob was not in the snapshot: he is told; Ann's join was.
        assert_eq!(tell.len(), 1);
        assert_eq!(tell[0].info.user, "bob");
        // Ann's second connection leaving removes nobody; her last does.
        assert!(!m.event(&event("ann", "c1", false), "me"));
        assert!(m.event(&event("ann", "c2", false), "me"));
        assert!(!m.event(&event("ann", "c2", false), "me"), "told once");
        // Own joins and leaves are never told.
        assert!(!m.event(&event("zed", "me", false), "me"));
        m.leave("a:presence-r");
        assert!(!m.event(&event("cat", "c9", true), "me"));
    }
}
