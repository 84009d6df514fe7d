//! The Pusher Channels protocol beside Centrifugo's (`pusher.apps`): the
//! WebSocket at `/app/{key}` that pusher-js and Laravel Echo speak
//! ([`socket`]), the HTTP API under `/apps/{id}/` that the Pusher server
//! libraries call ([`api`]), both on the same hub, storage and cluster as
//! every other client. Pusher channel `C` of an app is Herald channel
//! `<namespace>:C`; a Pusher event `E` with data `D` is the publication
//! `{"event": E, "data": D}` there, whoever published it.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, AtomicUsize};
use std::sync::Arc;

use axum::routing::{get, post};
use axum::{Extension, Router};
use bytes::Bytes;
use herald_protocol::{Format, PresenceEvent, Publication};
use serde::Deserialize;
use serde_json::value::RawValue;

use crate::config::pusher::{PusherApp, PusherConfig};
use crate::frame::{checked, Frame};
use crate::node::Node;
use crate::wire::control::Question;

mod api;
mod count;
mod members;
mod sign;
mod socket;
mod watchlist;

/// A publication tag naming the socket that must not get the event back
/// (the sender of a client event, or the HTTP API's `socket_id`).
const EXCLUDED_SOCKET: &str = "pusher_socket_id";

/// The longest channel name Pusher allows.
const MAX_CHANNEL: usize = 164;

/// The channel a signed-in user's socket joins for events sent to that
/// user (`sendToUser`), followed by the user id. Its `#` keeps it out of
/// reach of ordinary subscriptions and events.
const USER_CHANNEL: &str = "#server-to-user-";

/// The configured apps, by key (sockets) and by id (HTTP API).
pub struct Apps {
    by_key: HashMap<String, Arc<App>>,
    by_id: HashMap<String, Arc<App>>,
}

pub struct App {
    pub cfg: PusherApp,
    /// `<namespace>:`, put before a Pusher channel's name.
    prefix: String,
    /// Connections on this node, for `max_connections`.
    connections: AtomicUsize,
    /// Whether the node said once that cache channels always miss here.
    warned_no_history: AtomicBool,
    /// With `enable_subscription_count`.
    counter: Option<count::Counter>,
    /// Its watching sockets on this node, read again together.
    rereads: watchlist::Rereads,
}

impl App {
    /// The Herald channel of Pusher channel `name`.
    fn channel(&self, name: &str) -> String {
        format!("{}{name}", self.prefix)
    }

    /// A socket subscribed to (Pusher) channel `name`, Herald channel
    /// `channel`, or left it: counted when the app counts subscriptions.
    fn subscriptions_changed(&self, node: &Arc<Node>, name: &str, channel: &str) {
        let counted = Kind::of(name) != Kind::Presence && !name.starts_with(USER_CHANNEL);
        if let (true, Some(counter)) = (counted, &self.counter) {
            counter.changed(node, channel);
        }
    }
}

impl Apps {
    pub fn new(c: &PusherConfig) -> Self {
        let apps: Vec<Arc<App>> = c
            .apps
            .iter()
            .map(|cfg| {
                Arc::new(App {
                    prefix: format!("{}:", cfg.namespace),
                    cfg: cfg.clone(),
                    connections: AtomicUsize::new(0),
                    warned_no_history: AtomicBool::new(false),
                    counter: cfg
                        .enable_subscription_count
                        .then(|| count::Counter::new(cfg.subscription_count_interval.0)),
                    rereads: watchlist::Rereads::default(),
                })
            })
            .collect();
        Self {
            by_key: apps
                .iter()
                .map(|a| (a.cfg.key.clone(), a.clone()))
                .collect(),
            by_id: apps.iter().map(|a| (a.cfg.id.clone(), a.clone())).collect(),
        }
    }
}

/// The socket and the HTTP API, when any app is configured.
pub fn routes(c: &PusherConfig) -> Router<Arc<Node>> {
    Router::new()
        .route("/app/{key}", get(socket::upgrade))
        .route("/apps/{id}/events", post(api::events))
        .route("/apps/{id}/batch_events", post(api::batch_events))
        .route("/apps/{id}/channels", get(api::channels))
        .route("/apps/{id}/channels/{name}", get(api::channel))
        .route("/apps/{id}/channels/{name}/users", get(api::users))
        .route(
            "/apps/{id}/users/{user}/terminate_connections",
            post(api::terminate),
        )
        .route("/apps/{id}/users/{user}/events", post(api::user_event))
        .layer(Extension(Arc::new(Apps::new(c))))
}

/// The subscribers of the channels `question` names over the cluster; this
/// node's alone (logged) when the other nodes cannot be asked.
async fn counted(node: &Node, question: Question) -> BTreeMap<String, u64> {
    match node.cluster().count(question.clone()).await {
        Ok(counts) => counts,
        Err(e) => {
            tracing::warn!(error = %crate::report::Chain(&e), "channel counts of the other nodes not asked; this node's only");
            node.cluster().count_here(&question)
        }
    }
}

/// The kinds of Pusher channel, by their names' prefixes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Public,
    Private,
    Encrypted,
    Presence,
}

impl Kind {
    fn of(name: &str) -> Self {
        if name.starts_with("private-encrypted-") {
            Kind::Encrypted
        } else if name.starts_with("private-") {
            Kind::Private
        } else if name.starts_with("presence-") {
            Kind::Presence
        } else {
            Kind::Public
        }
    }

    /// Whether subscribing needs a signature from the app's backend.
    fn authorized(self) -> bool {
        self != Kind::Public
    }
}

/// Whether `name` is a cache channel: its last event goes to each new
/// subscriber first.
fn is_cache(name: &str) -> bool {
    [
        "cache-",
        "private-cache-",
        "private-encrypted-cache-",
        "presence-cache-",
    ]
    .iter()
    .any(|prefix| name.starts_with(prefix))
}

/// The hub's user of a socket of app `app` signed in as `user`: scoped to
/// the app, so that one app's `terminate_connections` and connection
/// limits never reach another app's users or Centrifugo's.
fn hub_user(app: &str, user: &str) -> String {
    format!("pusher:{app}:{user}")
}

/// Whether `name` is a Pusher channel name: up to 164 of `A-Za-z0-9_-=@,.;`.
fn valid_channel(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= MAX_CHANNEL
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"_-=@,.;".contains(&b))
}

/// The publication data of event `event` with Pusher data `data` (a
/// string, as Pusher carries it): the string's JSON text as it is when it
/// holds an object or an array, else the string itself (so that numbers,
/// strings and literals come back exactly as they were sent).
fn publication_data(event: &str, data: &str) -> Bytes {
    #[derive(serde::Serialize)]
    struct Shaped<'a> {
        event: &'a str,
        data: &'a RawValue,
    }
    let structured = data.trim_start().starts_with(['{', '['])
        && serde_json::from_str::<&RawValue>(data).is_ok();
    let text;
    let raw: &RawValue = if structured {
        serde_json::from_str(data).expect("checked above")
    } else {
        text = serde_json::value::to_raw_value(data).expect("a string is JSON");
        &text
    };
    let body = serde_json::to_vec(&Shaped { event, data: raw }).expect("JSON");
    Bytes::from(body)
}

/// A publication's data read as a Pusher event: its name and its data as
/// the string Pusher carries (a JSON string's text as it is, any other
/// value as JSON). `None` when the data is not `{"event": …, "data": …}`.
fn event_of(data: &[u8]) -> Option<(String, String)> {
    #[derive(Deserialize)]
    struct Shaped<'a> {
        event: String,
        #[serde(borrow, default)]
        data: Option<&'a RawValue>,
    }
    let shaped: Shaped = serde_json::from_slice(data).ok()?;
    // The protocol's own events come only from the server, never through
    // a channel (a client of the other protocol could fake members).
    if shaped.event.starts_with("pusher:") || shaped.event.starts_with("pusher_internal:") {
        return None;
    }
    let text = match shaped.data {
        None => String::new(),
        Some(raw) => match serde_json::from_str::<String>(raw.get()) {
            Ok(s) => s,
            Err(_) => raw.get().to_string(),
        },
    };
    Some((shaped.event, text))
}

/// The Pusher name of a Herald channel: what follows the namespace.
fn pusher_channel(channel: &str) -> &str {
    channel.split_once(':').map_or(channel, |(_, rest)| rest)
}

/// A server message: `{"event":…,"channel":…,"data":"…"}` (data always a
/// string, as pusher-js expects).
fn message(event: &str, channel: Option<&str>, data: &str, user_id: Option<&str>) -> Option<Frame> {
    #[derive(serde::Serialize)]
    struct Out<'a> {
        event: &'a str,
        #[serde(skip_serializing_if = "Option::is_none")]
        channel: Option<&'a str>,
        data: &'a str,
        #[serde(skip_serializing_if = "Option::is_none")]
        user_id: Option<&'a str>,
    }
    let out = Out {
        event,
        channel,
        data,
        user_id,
    };
    checked(serde_json::to_vec(&out).ok()?)
}

/// The Pusher protocol's frames for publications and presence events,
/// made once per message and shared by every Pusher socket.
pub struct Pusher;

impl Format<Publication> for Pusher {
    type Frame = Frame;

    fn encode(p: &Publication) -> Option<Frame> {
        let (event, data) = event_of(&p.data)?;
        let channel = pusher_channel(&p.channel);
        // Client events on presence channels say who sent them.
        let user = p
            .info
            .as_ref()
            .filter(|_| event.starts_with("client-") && Kind::of(channel) == Kind::Presence)
            .map(|i| i.user.as_str());
        message(&event, Some(channel), &data, user)
    }
}

impl Format<PresenceEvent> for Pusher {
    type Frame = Frame;

    fn encode(e: &PresenceEvent) -> Option<Frame> {
        let channel = pusher_channel(&e.channel);
        if Kind::of(channel) != Kind::Presence {
            return None;
        }
        let data = if e.join {
            let info = e
                .info
                .chan_info
                .as_ref()
                .and_then(|b| serde_json::from_slice::<&RawValue>(b).ok())
                .map_or("null", RawValue::get);
            format!(
                "{{\"user_id\":{},\"user_info\":{info}}}",
                serde_json::to_string(&e.info.user).ok()?
            )
        } else {
            serde_json::json!({ "user_id": e.info.user }).to_string()
        };
        let event = if e.join {
            "pusher_internal:member_added"
        } else {
            "pusher_internal:member_removed"
        };
        message(event, Some(channel), &data, None)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_travel_as_publications_and_back() {
        let data = publication_data("greet", r#"{"b":1,"a":12345678901234567890123}"#);
        assert_eq!(
            &data[..],
            br#"{"event":"greet","data":{"b":1,"a":12345678901234567890123}}"#,
            "kept as sent: order and digits"
        );
        assert_eq!(
            event_of(&data),
            Some((
                "greet".into(),
                r#"{"b":1,"a":12345678901234567890123}"#.into()
            ))
        );
        let data = publication_data("greet", r#"{"a":1}"#);
        assert_eq!(event_of(&data), Some(("greet".into(), r#"{"a":1}"#.into())));
        // Data that is not JSON stays a string, and comes back as it was.
        let data = publication_data("greet", "hello");
        assert_eq!(&data[..], br#"{"event":"greet","data":"hello"}"#);
        assert_eq!(event_of(&data), Some(("greet".into(), "hello".into())));
        // Numbers too large for a float, quoted strings, bad JSON: strings.
        for odd in ["1e400", r#"{"x":1e999"#, "\"quoted\"", "12"] {
            let data = publication_data("e", odd);
            assert_eq!(event_of(&data), Some(("e".into(), odd.into())), "{odd}");
        }
        assert_eq!(
            event_of(br#"{"event":"pusher_internal:member_added","data":{}}"#),
            None
        );
        // What a Centrifugo client publishes in that shape reaches Pusher.
        assert_eq!(
            event_of(br#"{"event":"e","data":[1,2]}"#),
            Some(("e".into(), "[1,2]".into()))
        );
        assert_eq!(event_of(br#"{"text":"no event"}"#), None);
        assert_eq!(event_of(b"[1]"), None);
    }

    #[test]
    fn channel_names_and_kinds() {
        assert!(valid_channel("private-chat.1;a=b@c,d"));
        assert!(!valid_channel("chat:x") && !valid_channel("") && !valid_channel("a b"));
        assert!(!valid_channel(&"x".repeat(MAX_CHANNEL + 1)));
        assert_eq!(Kind::of("presence-room"), Kind::Presence);
        assert_eq!(Kind::of("private-encrypted-x"), Kind::Encrypted);
        assert_eq!(Kind::of("private-x"), Kind::Private);
        assert_eq!(Kind::of("news"), Kind::Public);
        assert_eq!(Kind::of("presence-cache-room"), Kind::Presence);
        assert_eq!(Kind::of("private-encrypted-cache-x"), Kind::Encrypted);
        for cache in [
            "cache-x",
            "private-cache-x",
            "private-encrypted-cache-x",
            "presence-cache-x",
        ] {
            assert!(is_cache(cache), "{cache}");
        }
        for plain in ["x-cache-", "private-x", "presence-cachex", "cachex"] {
            assert!(!is_cache(plain), "{plain}");
        }
        assert_eq!(pusher_channel("app:presence-room"), "presence-room");
    }

    #[test]
    fn frames_are_pusher_messages() {
        let p = Publication::new(
            Arc::from("app:news"),
            publication_data("breaking", r#"{"t":"x"}"#),
            None,
        );
        let f = Pusher::encode(&p).unwrap();
        assert_eq!(
            f.as_text().unwrap(),
            r#"{"event":"breaking","channel":"news","data":"{\"t\":\"x\"}"}"#
        );
        let info = Arc::new(herald_protocol::ClientInfo {
            user: "7".into(),
            client: "1.2".into(),
            conn_info: None,
            chan_info: Some(Bytes::from_static(br#"{"name":"Ann"}"#)),
        });
        let join = PresenceEvent::new(Arc::from("app:presence-r"), info.clone(), true);
        assert_eq!(
            Pusher::encode(&join).unwrap().as_text().unwrap(),
            r#"{"event":"pusher_internal:member_added","channel":"presence-r","data":"{\"user_id\":\"7\",\"user_info\":{\"name\":\"Ann\"}}"}"#
        );
        let public = PresenceEvent::new(Arc::from("app:news"), info, false);
        assert!(Pusher::encode(&public).is_none());
    }
}
