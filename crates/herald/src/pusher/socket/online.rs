//! A signed-in socket's part in watchlist events ([`super::watchlist`]):
//! present in its user's online channel while it lasts, and watching the
//! users of its own watchlist (read again with the node's other watchers,
//! [`watchlist::Rereads`]).

use std::sync::Arc;

use futures_util::future::join_all;
use herald_protocol::ClientInfo;
use serde_json::Value;

use super::{Client, Conn, Link};
use crate::pusher::watchlist::{self, Watch, Watcher};
use crate::session::Outbox;

/// A signed-in socket's presence in its online channel.
pub(super) struct Online {
    channel: String,
    info: Arc<ClientInfo>,
}

impl Watcher for Conn {
    fn watch(&self) -> Option<&Watch> {
        self.watch.get().map(|w| &**w)
    }

    fn outbox(&self) -> &Outbox {
        &self.outbox
    }
}

impl Link {
    /// Signed in as `user` with `user_data`, in an app with watchlist
    /// events: present in the user's online channel, and watching the
    /// users of its watchlist, if it has one.
    pub(super) async fn go_online(&mut self, user: &str, user_data: &Value) {
        let channel = watchlist::online_channel(&self.app.cfg.id, user);
        let info = Arc::new(ClientInfo {
            user: user.to_string(),
            client: self.conn.id.to_string(),
            conn_info: None,
            chan_info: None,
        });
        self.node.presence().add(&channel, info.clone()).await;
        self.node.presence_event(&channel, info.clone(), true).await;
        let online = Box::new(Online { channel, info });
        let users = watchlist::parse(user_data);
        let users = match users {
            Ok(users) if !users.is_empty() => users,
            Ok(_) => return self.online = Some(online),
            Err(refused) => {
                self.online = Some(online);
                return self.error(None, &refused.reason());
            }
        };
        let watch = Watch::new(&self.app.cfg.id, &users);
        let channels = watch.channels();
        if self.conn.watch.set(Box::new(watch)).is_err() {
            return self.online = Some(online); // a socket signs in once
        }
        // Subscribed before reading who is there, so that no change falls
        // between the reading and the first event.
        let first = channels.iter().filter(|channel| {
            let client: Arc<dyn Client> = self.conn.clone();
            self.node.hub.subscribe(channel, client, true)
        });
        let first: Vec<&String> = first.collect();
        join_all(first.into_iter().map(|c| self.node.broker_sync(c))).await;
        // Told who is online and who is not (a channel it cannot read: its
        // user offline until the next reading, unless a join came), then
        // read again with the node's other watchers (not before: two
        // readings of one watch must not overlap).
        let watcher: Arc<dyn Watcher> = self.conn.clone();
        watchlist::read_first(&self.node, &watcher).await;
        self.app.rereads.add(Arc::downgrade(&watcher), &self.node);
        self.online = Some(online);
    }

    /// The socket ends: out of its user's online channel, watching no more.
    pub(super) async fn sign_out(&mut self) {
        if let Some(online) = self.online.take() {
            let Online { channel, info } = *online;
            self.node.presence().remove(&channel, &info.client).await;
            self.node.presence_event(&channel, info, false).await;
        }
        let Some(watch) = self.conn.watch.get() else {
            return;
        };
        for channel in watch.channels() {
            if self.node.hub.unsubscribe(&channel, self.conn.key) {
                self.node.broker_sync(&channel).await;
            }
        }
    }
}
