//! Pusher's watchlist events (`enable_watchlist_events`): a signed-in
//! user's `watchlist` (in the `user_data` its backend signed) names users
//! whose online status the socket is told, as
//! `pusher_internal:watchlist_events` (pusher-js: `pusher.user.watchlist`).
//! A user is online while signed in on at least one socket of the app,
//! anywhere in the cluster.
//!
//! Built from presence: each signed-in socket of such an app is present in
//! its user's online channel ([`online_channel`]), which no client can
//! subscribe to; a watching socket subscribes to the online channels of
//! its watchlist for their join and leave events, reads who is in them,
//! and tells the client `online` when a user's first socket comes and
//! `offline` when the last one goes, after first telling it who is online
//! and who is not.

use std::collections::{HashMap, HashSet};

use herald_protocol::PresenceEvent;
use parking_lot::Mutex;
use serde_json::{json, Value};

use super::message;
use crate::frame::Frame;

/// The most user ids a watchlist may hold (Pusher's limit).
pub const MAX_WATCHLIST: usize = 100;

/// The channel the sockets of app `app` signed in as `user` are present
/// in: private (`$`) and in no namespace, so that no client subscribes.
pub fn online_channel(app: &str, user: &str) -> String {
    format!("$pusher-online:{app}:{user}")
}

/// Why a watchlist is not taken.
#[derive(Debug, PartialEq, Eq)]
pub enum Refused {
    NotAList,
    TooLong,
}

impl Refused {
    pub fn reason(&self) -> String {
        match self {
            Refused::NotAList => "The watchlist must be an array of user ids".into(),
            Refused::TooLong => {
                format!("A watchlist holds at most {MAX_WATCHLIST} user ids; none is watched")
            }
        }
    }
}

/// The user ids of `user_data`'s `watchlist` (strings or numbers), each
/// once, in order; none when there is no watchlist.
pub fn parse(user_data: &Value) -> Result<Vec<String>, Refused> {
    let list = match user_data.get("watchlist") {
        None | Some(Value::Null) => return Ok(Vec::new()),
        Some(Value::Array(list)) => list,
        Some(_) => return Err(Refused::NotAList),
    };
    let mut seen = HashSet::new();
    let mut ids = Vec::new();
    for v in list {
        let id = match v {
            Value::String(s) if !s.is_empty() => s.clone(),
            Value::Number(n) => n.to_string(),
            _ => return Err(Refused::NotAList),
        };
        if seen.insert(id.clone()) {
            ids.push(id);
        }
    }
    if ids.len() > MAX_WATCHLIST {
        return Err(Refused::TooLong);
    }
    Ok(ids)
}

/// What a watching socket knows of the users it watches.
pub struct Watch {
    state: Mutex<State>,
}

struct State {
    /// By online channel: the watched user and the sockets it is signed in
    /// on.
    users: HashMap<String, Watched>,
    /// Sockets seen leaving before the first reading was merged: the
    /// reading may be older than their leave.
    gone: HashSet<String>,
    /// The first reading was merged and told.
    started: bool,
}

struct Watched {
    user: String,
    sockets: HashSet<String>,
}

impl Watch {
    /// A watch of `users` of app `app`, before anything is known of them.
    pub fn new(app: &str, users: &[String]) -> Self {
        let users = users
            .iter()
            .map(|u| {
                let watched = Watched {
                    user: u.clone(),
                    sockets: HashSet::new(),
                };
                (online_channel(app, u), watched)
            })
            .collect();
        Self {
            state: Mutex::new(State {
                users,
                gone: HashSet::new(),
                started: false,
            }),
        }
    }

    /// The online channels watched.
    pub fn channels(&self) -> Vec<String> {
        self.state.lock().users.keys().cloned().collect()
    }

    /// Whether `channel` is one of the online channels watched.
    pub fn watches(&self, channel: &str) -> bool {
        self.state.lock().users.contains_key(channel)
    }

    /// A join or leave in an online channel: the frame telling the client,
    /// when it brings a watched user online or takes the last socket of
    /// one away (and the first reading was told).
    pub fn event(&self, e: &PresenceEvent) -> Option<Frame> {
        let mut s = self.state.lock();
        let s = &mut *s;
        let watched = s.users.get_mut(&*e.channel)?;
        let socket = &e.info.client;
        let was_online = !watched.sockets.is_empty();
        if e.join {
            watched.sockets.insert(socket.clone());
        } else {
            watched.sockets.remove(socket);
            if !s.started {
                s.gone.insert(socket.clone());
            }
        }
        let online = !watched.sockets.is_empty();
        if !s.started || online == was_online {
            return None;
        }
        let name = if online { "online" } else { "offline" };
        frame(&[(name, vec![watched.user.as_str()])])
    }

    /// Merges what the online channels held when read (channel → the
    /// sockets present) and tells the client, once, who is online and who
    /// is not.
    pub fn start(&self, read: Vec<(String, Vec<String>)>) -> Option<Frame> {
        let mut s = self.state.lock();
        let s = &mut *s;
        for (channel, sockets) in read {
            if let Some(watched) = s.users.get_mut(&channel) {
                let fresh = sockets.into_iter().filter(|c| !s.gone.contains(c));
                watched.sockets.extend(fresh);
            }
        }
        s.started = true;
        s.gone = HashSet::new();
        let (mut online, mut offline) = (Vec::new(), Vec::new());
        for w in s.users.values() {
            let list = if w.sockets.is_empty() {
                &mut offline
            } else {
                &mut online
            };
            list.push(w.user.as_str());
        }
        online.sort_unstable();
        offline.sort_unstable();
        frame(&[("online", online), ("offline", offline)])
    }
}

/// `pusher_internal:watchlist_events` with one event per non-empty list.
fn frame(events: &[(&str, Vec<&str>)]) -> Option<Frame> {
    let events: Vec<Value> = events
        .iter()
        .filter(|(_, ids)| !ids.is_empty())
        .map(|(name, ids)| json!({ "name": name, "user_ids": ids }))
        .collect();
    if events.is_empty() {
        return None;
    }
    let data = json!({ "events": events }).to_string();
    message("pusher_internal:watchlist_events", None, &data, None)
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use herald_protocol::ClientInfo;

    use super::*;

    fn event(user: &str, socket: &str, join: bool) -> PresenceEvent {
        let info = ClientInfo {
            user: user.into(),
            client: socket.into(),
            conn_info: None,
            chan_info: None,
        };
        PresenceEvent::new(Arc::from(online_channel("1", user)), Arc::new(info), join)
    }

    fn text(f: Option<Frame>) -> Option<Value> {
        let f = f?;
        let outer: Value = serde_json::from_slice(f.as_bytes()).unwrap();
        assert_eq!(outer["event"], "pusher_internal:watchlist_events");
        Some(serde_json::from_str(outer["data"].as_str().unwrap()).unwrap())
    }

    #[test]
    fn watchlists_are_read_from_user_data() {
        let ids = parse(&json!({"id": "a", "watchlist": ["b", 7, "b"]})).unwrap();
        assert_eq!(ids, ["b", "7"]);
        assert_eq!(parse(&json!({"id": "a"})).unwrap(), Vec::<String>::new());
        assert_eq!(parse(&json!({"watchlist": "b"})), Err(Refused::NotAList));
        assert_eq!(parse(&json!({"watchlist": [""]})), Err(Refused::NotAList));
        let edge: Vec<String> = (0..MAX_WATCHLIST).map(|i| i.to_string()).collect();
        assert_eq!(parse(&json!({ "watchlist": edge })).unwrap().len(), 100);
        let over: Vec<String> = (0..=MAX_WATCHLIST).map(|i| i.to_string()).collect();
        assert_eq!(parse(&json!({ "watchlist": over })), Err(Refused::TooLong));
    }

    #[test]
    fn first_and_last_sockets_make_a_user_online_and_offline() {
        let w = Watch::new("1", &["b".into(), "c".into()]);
        // Before the first reading is told, events only update.
        assert!(w.event(&event("b", "s1", true)).is_none());
        let told = text(w.start(vec![(online_channel("1", "b"), vec!["s1".into()])])).unwrap();
        assert_eq!(
            told,
            json!({"events": [{"name": "online", "user_ids": ["b"]},
                              {"name": "offline", "user_ids": ["c"]}]})
        );
        // A second socket of b: nothing new; c's first: online.
        assert_eq!(text(w.event(&event("b", "s2", true))), None);
        let told = text(w.event(&event("c", "s3", true))).unwrap();
        assert_eq!(
            told,
            json!({"events": [{"name": "online", "user_ids": ["c"]}]})
        );
        // b's sockets go: offline only with the last.
        assert_eq!(text(w.event(&event("b", "s1", false))), None);
        let told = text(w.event(&event("b", "s2", false))).unwrap();
        assert_eq!(
            told,
            json!({"events": [{"name": "offline", "user_ids": ["b"]}]})
        );
        // Someone not watched: nothing.
        assert_eq!(text(w.event(&event("d", "s4", true))), None);
    }

    #[test]
    fn a_socket_gone_before_the_reading_is_merged_stays_gone() {
        let w = Watch::new("1", &["b".into()]);
        // The reading still had s1, but its leave came first.
        assert!(w.event(&event("b", "s1", false)).is_none());
        let told = text(w.start(vec![(online_channel("1", "b"), vec!["s1".into()])])).unwrap();
        assert_eq!(
            told,
            json!({"events": [{"name": "offline", "user_ids": ["b"]}]})
        );
    }
}
