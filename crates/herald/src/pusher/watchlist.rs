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
//! and who is not. Every [`REREAD`] the node reads its watchers' online
//! channels again ([`Rereads`]), each channel once for all its watchers.

mod rereads;

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use herald_protocol::PresenceEvent;
use parking_lot::Mutex;
use serde_json::{json, Value};

use super::message;
use crate::frame::Frame;
use crate::session::Outbox;
pub use rereads::{read_first, Rereads, Watcher};

/// The most user ids a watchlist may hold (Pusher's limit).
pub const MAX_WATCHLIST: usize = 100;

/// The longest user id a watchlist may name (as a presence member's).
pub const MAX_ID: usize = 128;

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
            Refused::NotAList => format!(
                "The watchlist must be an array of user ids (strings of 1 to {MAX_ID} characters, or numbers)"
            ),
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
            Value::String(s) if !s.is_empty() && s.len() <= MAX_ID => s.clone(),
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

/// How often a node reads its watching sockets' online channels again, to
/// set right what a lost join or leave event left wrong (a node that died
/// sends no leaves: its entries expire after `presence_ttl`).
pub const REREAD: Duration = Duration::from_secs(30);

/// What a watching socket knows of the users it watches, and what it told
/// the client. Frames are pushed while the state is locked, so that they
/// reach the client in the order the state changed.
pub struct Watch {
    state: Mutex<State>,
}

struct State {
    /// By online channel: the watched user and the sockets it is signed in
    /// on.
    users: HashMap<String, Watched>,
    /// A reading of presence is under way: the sockets seen coming and
    /// going meanwhile, which the reading may be older than.
    reading: bool,
    came: HashSet<String>,
    gone: HashSet<String>,
}

struct Watched {
    user: String,
    sockets: HashSet<String>,
    /// What the client was told last (`None`: nothing yet).
    told: Option<bool>,
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
                    told: None,
                };
                (online_channel(app, u), watched)
            })
            .collect();
        Self {
            state: Mutex::new(State {
                users,
                reading: false,
                came: HashSet::new(),
                gone: HashSet::new(),
            }),
        }
    }

    /// The online channels watched.
    pub fn channels(&self) -> Vec<String> {
        self.state.lock().users.keys().cloned().collect()
    }

    /// A reading of the online channels begins: changes from now on are
    /// noted, to be kept over what the reading finds.
    pub fn begin_reading(&self) {
        let mut s = self.state.lock();
        s.reading = true;
        s.came.clear();
        s.gone.clear();
    }

    /// A join or leave in an online channel; tells the client (into
    /// `outbox`) when it brings a watched user online or takes the last
    /// socket of one away, once the client knows the user's state.
    pub fn event(&self, e: &PresenceEvent, outbox: &Outbox) {
        let mut s = self.state.lock();
        let s = &mut *s;
        let Some(watched) = s.users.get_mut(&*e.channel) else {
            return;
        };
        let socket = &e.info.client;
        if e.join {
            watched.sockets.insert(socket.clone());
        } else {
            watched.sockets.remove(socket);
        }
        if s.reading {
            let (noted, unnoted) = if e.join {
                (&mut s.came, &mut s.gone)
            } else {
                (&mut s.gone, &mut s.came)
            };
            unnoted.remove(socket);
            noted.insert(socket.clone());
        }
        let online = !watched.sockets.is_empty();
        if watched.told.is_some_and(|told| told != online) {
            watched.told = Some(online);
            let name = if online { "online" } else { "offline" };
            push(outbox, &[(name, vec![watched.user.as_str()])]);
        }
    }

    /// Ends a reading: what the online channels held when read (channel →
    /// the sockets present), with the changes seen meanwhile kept, becomes
    /// the state; the client is told every user whose state it does not
    /// know yet or knows wrong — after the first reading, everyone.
    pub fn end_reading(&self, read: Vec<(String, Vec<String>)>, outbox: &Outbox) {
        let mut s = self.state.lock();
        let s = &mut *s;
        for (channel, sockets) in read {
            let Some(watched) = s.users.get_mut(&channel) else {
                continue;
            };
            let mut now: HashSet<String> = sockets
                .into_iter()
                .filter(|c| !s.gone.contains(c))
                .collect();
            now.extend(
                watched
                    .sockets
                    .iter()
                    .filter(|c| s.came.contains(*c))
                    .cloned(),
            );
            watched.sockets = now;
        }
        s.reading = false;
        s.came = HashSet::new();
        s.gone = HashSet::new();
        let (mut online, mut offline) = (Vec::new(), Vec::new());
        for w in s.users.values_mut() {
            let now = !w.sockets.is_empty();
            if w.told != Some(now) {
                w.told = Some(now);
                let list = if now { &mut online } else { &mut offline };
                list.push(w.user.as_str());
            }
        }
        online.sort_unstable();
        offline.sort_unstable();
        push(outbox, &[("online", online), ("offline", offline)]);
    }
}

/// `pusher_internal:watchlist_events` with one event per non-empty list,
/// into `outbox` (nothing when every list is empty).
fn push(outbox: &Outbox, events: &[(&str, Vec<&str>)]) {
    if let Some(frame) = frame(events) {
        outbox.push_frame(frame);
    }
}

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
pub(super) mod tests {
    use std::collections::VecDeque;
    use std::sync::Arc;

    use herald_protocol::ClientInfo;

    use super::*;
    use crate::session::Item;

    fn event(user: &str, socket: &str, join: bool) -> PresenceEvent {
        let info = ClientInfo {
            user: user.into(),
            client: socket.into(),
            conn_info: None,
            chan_info: None,
        };
        PresenceEvent::new(Arc::from(online_channel("1", user)), Arc::new(info), join)
    }

    /// The watchlist events pushed into `outbox` so far, in order.
    pub(super) fn told(outbox: &Outbox) -> Vec<Value> {
        let mut items = VecDeque::new();
        outbox.drain(&mut items);
        items
            .into_iter()
            .map(|item| {
                let Item::Frame(f) = item else {
                    panic!("a frame")
                };
                let outer: Value = serde_json::from_slice(f.as_bytes()).unwrap();
                assert_eq!(outer["event"], "pusher_internal:watchlist_events");
                let data: Value = serde_json::from_str(outer["data"].as_str().unwrap()).unwrap();
                data["events"].clone()
            })
            .collect()
    }

    /// A watch of `users` of app "1", and the outbox it tells.
    pub(super) fn watching(users: &[&str]) -> (Watch, Outbox) {
        let users: Vec<String> = users.iter().map(|u| u.to_string()).collect();
        (Watch::new("1", &users), Outbox::new(1 << 20))
    }

    pub(super) fn read(user: &str, sockets: &[&str]) -> (String, Vec<String>) {
        let sockets = sockets.iter().map(|s| s.to_string()).collect();
        (online_channel("1", user), sockets)
    }

    #[test]
    fn watchlists_are_read_from_user_data() {
        let ids = parse(&json!({"id": "a", "watchlist": ["b", 7, "b"]})).unwrap();
        assert_eq!(ids, ["b", "7"]);
        assert_eq!(parse(&json!({"id": "a"})).unwrap(), Vec::<String>::new());
        assert_eq!(parse(&json!({"watchlist": "b"})), Err(Refused::NotAList));
        assert_eq!(parse(&json!({"watchlist": [""]})), Err(Refused::NotAList));
        let long = "x".repeat(MAX_ID);
        assert_eq!(parse(&json!({ "watchlist": [long] })).unwrap().len(), 1);
        let longer = "x".repeat(MAX_ID + 1);
        assert_eq!(
            parse(&json!({ "watchlist": [longer] })),
            Err(Refused::NotAList)
        );
        let edge: Vec<String> = (0..MAX_WATCHLIST).map(|i| i.to_string()).collect();
        assert_eq!(parse(&json!({ "watchlist": edge })).unwrap().len(), 100);
        let over: Vec<String> = (0..=MAX_WATCHLIST).map(|i| i.to_string()).collect();
        assert_eq!(parse(&json!({ "watchlist": over })), Err(Refused::TooLong));
    }

    #[test]
    fn first_and_last_sockets_make_a_user_online_and_offline() {
        let (w, out) = watching(&["b", "c"]);
        w.begin_reading();
        // Before the first reading is told, events only update.
        w.event(&event("b", "s1", true), &out);
        assert!(told(&out).is_empty());
        w.end_reading(vec![read("b", &["s1"]), read("c", &[])], &out);
        assert_eq!(
            told(&out),
            [json!([{"name": "online", "user_ids": ["b"]},
                    {"name": "offline", "user_ids": ["c"]}])]
        );
        // A second socket of b: nothing new; c's first: online.
        w.event(&event("b", "s2", true), &out);
        w.event(&event("c", "s3", true), &out);
        assert_eq!(told(&out), [json!([{"name": "online", "user_ids": ["c"]}])]);
        // b's sockets go: offline only with the last.
        w.event(&event("b", "s1", false), &out);
        assert!(told(&out).is_empty());
        w.event(&event("b", "s2", false), &out);
        assert_eq!(
            told(&out),
            [json!([{"name": "offline", "user_ids": ["b"]}])]
        );
        // Someone not watched: nothing.
        w.event(&event("d", "s4", true), &out);
        assert!(told(&out).is_empty());
    }

    #[test]
    fn changes_during_a_reading_are_kept_over_it() {
        let (w, out) = watching(&["b", "c"]);
        w.begin_reading();
        // The reading still had s1, but its leave came first; s2 came after
        // the reading was taken.
        w.event(&event("b", "s1", false), &out);
        w.event(&event("c", "s2", true), &out);
        w.end_reading(vec![read("b", &["s1"]), read("c", &[])], &out);
        assert_eq!(
            told(&out),
            [json!([{"name": "online", "user_ids": ["c"]},
                    {"name": "offline", "user_ids": ["b"]}])]
        );
    }

    #[test]
    fn a_later_reading_sets_right_what_a_lost_event_left_wrong() {
        let (w, out) = watching(&["b", "c"]);
        w.begin_reading();
        w.end_reading(vec![read("b", &["s1"]), read("c", &[])], &out);
        told(&out);
        // b's node died (no leave came); c came online with no join heard.
        w.begin_reading();
        w.end_reading(vec![read("b", &[]), read("c", &["s9"])], &out);
        assert_eq!(
            told(&out),
            [json!([{"name": "online", "user_ids": ["c"]},
                    {"name": "offline", "user_ids": ["b"]}])]
        );
        // Nothing changed: nothing told.
        w.begin_reading();
        w.end_reading(vec![read("b", &[]), read("c", &["s9"])], &out);
        assert!(told(&out).is_empty());
    }
}
