//! A signed-in socket's part in watchlist events ([`super::watchlist`]):
//! present in its user's online channel while it lasts, and watching the
//! users of its own watchlist.

use std::sync::Arc;

use herald_protocol::ClientInfo;
use serde_json::Value;

use super::{Client, Link};
use crate::pusher::watchlist::{self, Watch};

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
        self.online = Some((channel, info));
        let users = match watchlist::parse(user_data) {
            Ok(users) => users,
            Err(refused) => return self.error(None, &refused.reason()),
        };
        if users.is_empty() {
            return;
        }
        let watch = Watch::new(&self.app.cfg.id, &users);
        let channels = watch.channels();
        if self.conn.watch.set(Box::new(watch)).is_err() {
            return; // a socket signs in once
        }
        // Subscribed before reading who is there, so that no change falls
        // between the reading and the first event.
        for channel in &channels {
            let client: Arc<dyn Client> = self.conn.clone();
            if self.node.hub.subscribe(channel, client, true) {
                self.node.broker_sync(channel).await;
            }
        }
        let mut read = Vec::with_capacity(channels.len());
        for channel in channels {
            // Unreadable (shared presence down): told as offline until the
            // user's next join.
            let sockets = match self.node.presence_get(&channel).await {
                Ok(members) => members.into_keys().collect(),
                Err(_) => Vec::new(),
            };
            read.push((channel, sockets));
        }
        let told = self.conn.watch.get().and_then(|w| w.start(read));
        if let Some(frame) = told {
            self.conn.outbox.push_frame(frame);
        }
    }

    /// Whether `channel` is one of the online channels the socket watches.
    pub(super) fn watches(&self, channel: &str) -> bool {
        self.conn.watch.get().is_some_and(|w| w.watches(channel))
    }

    /// The socket ends: out of its user's online channel, watching no more.
    pub(super) async fn sign_out(&mut self) {
        if let Some((channel, info)) = self.online.take() {
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
