//! A signed-in socket's part in watchlist events ([`super::watchlist`]):
//! present in its user's online channel while it lasts, and watching the
//! users of its own watchlist (read again every [`watchlist::REREAD`]).

use std::sync::Arc;

use futures_util::future::join_all;
use herald_protocol::ClientInfo;
use serde_json::Value;
use tokio::time::Instant;

use super::{Client, Link};

/// The longest a socket waits for its watchlist's presence (it neither
/// reads nor writes meanwhile); a reading not done by then is dropped.
const READ_LIMIT: std::time::Duration = std::time::Duration::from_secs(2);
use crate::pusher::watchlist::{self, Watch};

/// A signed-in socket's presence in its online channel, and when it reads
/// its watchlist's again (none: it watches no one).
pub(super) struct Online {
    channel: String,
    info: Arc<ClientInfo>,
    reread_at: Option<Instant>,
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
        let mut online = Box::new(Online {
            channel,
            info,
            reread_at: None,
        });
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
        self.read_watched().await;
        online.reread_at = Some(self.next_reread());
        self.online = Some(online);
    }

    /// Reads who is in the watched users' online channels and tells the
    /// client what changed (everything, the first time). A channel that
    /// cannot be read (shared presence down or slow: the socket waits at
    /// most [`READ_LIMIT`]) keeps what the socket knew of it — the first
    /// time, that its user is offline.
    async fn read_watched(&self) {
        let Some(watch) = self.conn.watch.get() else {
            return;
        };
        watch.begin_reading();
        let channels = watch.channels();
        let reads = join_all(channels.iter().map(|c| self.node.presence_get(c)));
        let reads = tokio::time::timeout(READ_LIMIT, reads)
            .await
            .unwrap_or_default();
        let read = channels
            .into_iter()
            .zip(reads)
            .filter_map(|(channel, members)| Some((channel, members.ok()?.into_keys().collect())))
            .collect();
        watch.end_reading(read, &self.conn.outbox);
    }

    /// When to read the watchlist next: [`watchlist::REREAD`] from now,
    /// and up to a third more, varying by socket, so that sockets that
    /// signed in together (after a restart) do not read together.
    fn next_reread(&self) -> Instant {
        let spread = watchlist::REREAD / 3;
        let share = (self.conn.key % 1000) as u32;
        Instant::now() + watchlist::REREAD + spread * share / 1000
    }

    /// When the watchlist is next read again, if the socket watches.
    pub(super) fn reread_at(&self) -> Option<Instant> {
        self.online.as_ref()?.reread_at
    }

    /// Reads the watchlist again if it is time to.
    pub(super) async fn reread_if_due(&mut self, now: Instant) {
        let due = self.reread_at().is_some_and(|at| at <= now);
        if !due {
            return;
        }
        self.read_watched().await;
        let next = self.next_reread();
        if let Some(online) = &mut self.online {
            online.reread_at = Some(next);
        }
    }

    /// The socket ends: out of its user's online channel, watching no more.
    pub(super) async fn sign_out(&mut self) {
        if let Some(online) = self.online.take() {
            let Online { channel, info, .. } = *online;
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
