//! The Pusher HTTP API under `/apps/{id}/`, every request signed with the
//! app's secret (see [`sign::request`]): trigger events on channels, in
//! batches, and read channels, their counts and their members; end a
//! user's connections. Counts of subscriptions are asked of every node (a
//! survey); user counts and members come from presence, which spans the
//! cluster.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{FromRequest, FromRequestParts, Path, Query, Request, State};
use axum::http::{Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use herald_protocol::Disconnect;
use serde::Deserialize;
use serde_json::{json, Map, Value};

use super::{counted, publication_data, sign, valid_channel, App, Apps, Kind, EXCLUDED_SOCKET};
use crate::node::{Node, PublishOptions};
use crate::wire::control::{Action, Question, Target};

/// The most channels one event goes to, and events one batch holds.
const MAX_CHANNELS: usize = 100;
const MAX_BATCH: usize = 10;
/// The longest event name.
const MAX_NAME: usize = 200;

type Params = Query<Vec<(String, String)>>;

/// A refusal: the status and why, as the body.
pub(super) struct Refusal(StatusCode, String);

impl IntoResponse for Refusal {
    fn into_response(self) -> Response {
        (self.0, self.1).into_response()
    }
}

fn refused(status: StatusCode, why: impl Into<String>) -> Refusal {
    Refusal(status, why.into())
}

/// The app of `id`, when the request is signed with its secret.
fn app_of(
    apps: &Apps,
    id: &str,
    method: &Method,
    uri: &Uri,
    params: &[(String, String)],
    body: &[u8],
) -> Result<Arc<App>, Refusal> {
    let Some(app) = apps.by_id.get(id) else {
        return Err(refused(
            StatusCode::NOT_FOUND,
            format!("Unknown app {id:?}"),
        ));
    };
    let now = crate::clock::now_unix();
    sign::request(&app.cfg, method.as_str(), uri.path(), params, body, now)
        .map_err(|why| refused(StatusCode::UNAUTHORIZED, why))?;
    Ok(app.clone())
}

/// A request signed with its app's secret: the app, the query parameters
/// and the body. Any other request is refused before a handler runs.
pub(super) struct Signed {
    app: Arc<App>,
    params: Vec<(String, String)>,
    body: Bytes,
}

impl FromRequest<Arc<Node>> for Signed {
    type Rejection = Refusal;

    async fn from_request(req: Request, node: &Arc<Node>) -> Result<Self, Refusal> {
        let (mut parts, body) = req.into_parts();
        let Extension(apps) = Extension::<Arc<Apps>>::from_request_parts(&mut parts, node)
            .await
            .map_err(|_| refused(StatusCode::INTERNAL_SERVER_ERROR, "no Pusher apps"))?;
        let id = parts
            .uri
            .path()
            .strip_prefix("/apps/")
            .and_then(|rest| rest.split('/').next())
            .unwrap_or_default()
            .to_string();
        let Query(params) = Params::try_from_uri(&parts.uri)
            .map_err(|e| refused(StatusCode::BAD_REQUEST, e.body_text()))?;
        let limit = node.config.http_api.max_request_body_size;
        let body = axum::body::to_bytes(body, limit)
            .await
            .map_err(|_| refused(StatusCode::PAYLOAD_TOO_LARGE, "request body too large"))?;
        let app = app_of(&apps, &id, &parts.method, &parts.uri, &params, &body)?;
        Ok(Self { app, params, body })
    }
}

/// One event of `events` or `batch_events`.
#[derive(Deserialize)]
struct Event {
    name: String,
    /// Pusher's data is a string; anything else is taken as its JSON.
    data: Value,
    #[serde(default)]
    channels: Vec<String>,
    #[serde(default)]
    channel: Option<String>,
    #[serde(default)]
    socket_id: Option<String>,
    #[serde(default)]
    info: Option<String>,
}

impl Event {
    fn channels(&self) -> Vec<&str> {
        let mut out: Vec<&str> = self.channels.iter().map(String::as_str).collect();
        out.extend(self.channel.as_deref());
        out
    }

    fn data(&self) -> String {
        match &self.data {
            Value::String(s) => s.clone(),
            other => other.to_string(),
        }
    }

    fn check(&self, app: &App) -> Result<(), Refusal> {
        let channels = self.channels();
        if self.name.is_empty() || self.name.len() > MAX_NAME {
            return Err(refused(
                StatusCode::BAD_REQUEST,
                "name: 1 to 200 characters",
            ));
        }
        if channels.is_empty() || channels.len() > MAX_CHANNELS {
            return Err(refused(
                StatusCode::BAD_REQUEST,
                "channels: 1 to 100 channels",
            ));
        }
        let valid = |c: &&str| valid_channel(c) || c.starts_with(super::USER_CHANNEL);
        if let Some(bad) = channels.iter().find(|c| !valid(c)) {
            return Err(refused(
                StatusCode::BAD_REQUEST,
                format!("Invalid channel name {bad:?}"),
            ));
        }
        if self.data().len() > app.cfg.max_event_size {
            return Err(refused(
                StatusCode::PAYLOAD_TOO_LARGE,
                format!(
                    "data over {} bytes (max_event_size)",
                    app.cfg.max_event_size
                ),
            ));
        }
        Ok(())
    }

    async fn trigger(&self, node: &Node, app: &App) -> Result<(), Refusal> {
        let data = publication_data(&self.name, &self.data());
        for channel in self.channels() {
            let mut options = PublishOptions::default();
            if let Some(socket) = &self.socket_id {
                options
                    .tags
                    .insert(EXCLUDED_SOCKET.to_string(), socket.clone());
            }
            let herald = app.channel(channel);
            if let Err(e) = node.publish(&herald, data.clone(), options).await {
                return Err(refused(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    format!("not published to {channel}: {}", e.message),
                ));
            }
        }
        Ok(())
    }

    /// The counts `info` asks for, by channel.
    async fn info(&self, node: &Node, app: &App) -> Map<String, Value> {
        let mut out = Map::new();
        let Some(wanted) = &self.info else {
            return out;
        };
        // One survey for all the event's channels.
        let heralds = self.channels().iter().map(|c| app.channel(c)).collect();
        let subscribed = match wants(wanted, "subscription_count") {
            true => counted(node, Question::Subscribers { channels: heralds }).await,
            false => BTreeMap::new(),
        };
        for channel in self.channels() {
            let n = subscribed.get(&app.channel(channel)).copied();
            out.insert(
                channel.to_string(),
                counts(node, app, channel, wanted, n.unwrap_or(0)).await,
            );
        }
        out
    }
}

/// Whether `info` (comma-separated) asks for `what`.
fn wants(info: &str, what: &str) -> bool {
    info.split(',').any(|i| i.trim() == what)
}

/// `subscription_count` (`subscribers`, counted over the cluster) and
/// `user_count` (presence channels) of a channel, as `info` asks.
async fn counts(node: &Node, app: &App, channel: &str, info: &str, subscribers: u64) -> Value {
    let herald = app.channel(channel);
    let mut out = Map::new();
    if wants(info, "subscription_count") {
        out.insert("subscription_count".into(), subscribers.into());
    }
    if wants(info, "user_count") && Kind::of(channel) == Kind::Presence {
        let users = node.presence_stats(&herald).await.map_or(0, |(_, u)| u);
        out.insert("user_count".into(), users.into());
    }
    Value::Object(out)
}

pub(super) async fn events(
    State(node): State<Arc<Node>>,
    Signed { app, body, .. }: Signed,
) -> Response {
    let event: Event = match serde_json::from_slice(&body) {
        Ok(e) => e,
        Err(e) => {
            return refused(StatusCode::BAD_REQUEST, format!("malformed event: {e}"))
                .into_response()
        }
    };
    if let Err(refused) = event.check(&app) {
        return refused.into_response();
    }
    if let Err(failed) = event.trigger(&node, &app).await {
        return failed.into_response();
    }
    let info = event.info(&node, &app).await;
    if info.is_empty() {
        Json(json!({})).into_response()
    } else {
        Json(json!({ "channels": info })).into_response()
    }
}

pub(super) async fn batch_events(
    State(node): State<Arc<Node>>,
    Signed { app, body, .. }: Signed,
) -> Response {
    #[derive(Deserialize)]
    struct Batch {
        batch: Vec<Event>,
    }
    let batch: Batch = match serde_json::from_slice(&body) {
        Ok(b) => b,
        Err(e) => {
            return refused(StatusCode::BAD_REQUEST, format!("malformed batch: {e}"))
                .into_response()
        }
    };
    if batch.batch.len() > MAX_BATCH {
        return refused(StatusCode::BAD_REQUEST, "batch: at most 10 events").into_response();
    }
    // All or nothing: every event is checked before any is triggered.
    for event in &batch.batch {
        if let Err(refused) = event.check(&app) {
            return refused.into_response();
        }
    }
    let mut infos = Vec::new();
    for event in &batch.batch {
        if let Err(failed) = event.trigger(&node, &app).await {
            return failed.into_response();
        }
        let info = event.info(&node, &app).await;
        infos.push(info.into_iter().next().map_or(json!({}), |(_, v)| v));
    }
    if batch.batch.iter().any(|e| e.info.is_some()) {
        Json(json!({ "batch": infos })).into_response()
    } else {
        Json(json!({})).into_response()
    }
}

fn param<'a>(params: &'a [(String, String)], name: &str) -> Option<&'a str> {
    params
        .iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
}

pub(super) async fn channels(
    State(node): State<Arc<Node>>,
    Signed { app, params, .. }: Signed,
) -> Response {
    let prefix = param(&params, "filter_by_prefix").unwrap_or("");
    let info = param(&params, "info").unwrap_or("");
    if wants(info, "user_count") && !prefix.starts_with("presence-") {
        let why = "info=user_count needs filter_by_prefix=presence-";
        return refused(StatusCode::BAD_REQUEST, why).into_response();
    }
    let question = Question::Channels {
        prefix: app.channel(prefix),
    };
    let occupied = counted(&node, question).await;
    let mut out = Map::new();
    for (herald, n) in occupied {
        let Some(name) = herald.strip_prefix(&app.prefix) else {
            continue;
        };
        if name.starts_with(super::USER_CHANNEL) {
            continue;
        }
        let value = counts(&node, &app, name, info, n).await;
        out.insert(name.to_string(), value);
    }
    Json(json!({ "channels": out })).into_response()
}

pub(super) async fn channel(
    State(node): State<Arc<Node>>,
    Path((_, name)): Path<(String, String)>,
    Signed { app, params, .. }: Signed,
) -> Response {
    if !valid_channel(&name) {
        return refused(StatusCode::BAD_REQUEST, "Invalid channel name").into_response();
    }
    let info = param(&params, "info").unwrap_or("");
    let herald = app.channel(&name);
    let question = Question::Subscribers {
        channels: vec![herald.clone()],
    };
    let subscribed = counted(&node, question).await;
    let subscribers = subscribed.get(&herald).copied().unwrap_or(0);
    let Value::Object(mut out) = counts(&node, &app, &name, info, subscribers).await else {
        unreachable!("counts are an object")
    };
    let occupied = subscribers > 0
        || (Kind::of(&name) == Kind::Presence
            && node.presence_stats(&herald).await.is_ok_and(|(c, _)| c > 0));
    out.insert("occupied".into(), occupied.into());
    Json(Value::Object(out)).into_response()
}

pub(super) async fn users(
    State(node): State<Arc<Node>>,
    Path((_, name)): Path<(String, String)>,
    Signed { app, .. }: Signed,
) -> Response {
    if Kind::of(&name) != Kind::Presence || !valid_channel(&name) {
        return refused(
            StatusCode::BAD_REQUEST,
            "users are listed for presence channels only",
        )
        .into_response();
    }
    let members = match node.presence_get(&app.channel(&name)).await {
        Ok(m) => m,
        Err(e) => {
            return refused(StatusCode::INTERNAL_SERVER_ERROR, e.message.to_string())
                .into_response()
        }
    };
    let ids: BTreeSet<&str> = members.values().map(|m| m.user.as_str()).collect();
    let users: Vec<Value> = ids.into_iter().map(|id| json!({ "id": id })).collect();
    Json(json!({ "users": users })).into_response()
}

/// `sendToUser`: an event to every socket signed in as `user` (on its
/// `#server-to-user-` channel).
pub(super) async fn user_event(
    State(node): State<Arc<Node>>,
    Path((_, user)): Path<(String, String)>,
    Signed { app, body, .. }: Signed,
) -> Response {
    #[derive(Deserialize)]
    struct ToUser {
        name: String,
        data: Value,
    }
    let event: ToUser = match serde_json::from_slice(&body) {
        Ok(e) => e,
        Err(e) => {
            return refused(StatusCode::BAD_REQUEST, format!("malformed event: {e}"))
                .into_response()
        }
    };
    let event = Event {
        name: event.name,
        data: event.data,
        channels: Vec::new(),
        channel: Some(format!("{}{user}", super::USER_CHANNEL)),
        socket_id: None,
        info: None,
    };
    if user.is_empty() || user.len() > super::MAX_CHANNEL {
        return refused(StatusCode::BAD_REQUEST, "a user id of 1 to 164 characters")
            .into_response();
    }
    if let Err(refused) = event.check(&app) {
        return refused.into_response();
    }
    match event.trigger(&node, &app).await {
        Ok(()) => Json(json!({})).into_response(),
        Err(failed) => failed.into_response(),
    }
}

pub(super) async fn terminate(
    State(node): State<Arc<Node>>,
    Path((_, user)): Path<(String, String)>,
    Signed { app, .. }: Signed,
) -> Response {
    let d = Disconnect::force_disconnect();
    let target = Target {
        user: super::hub_user(&app.cfg.id, &user),
        ..Default::default()
    };
    let action = Action::Disconnect {
        code: d.code,
        reason: "connections terminated".into(),
    };
    match node.user_command(target, action).await {
        Ok(()) => Json(json!({})).into_response(),
        Err(e) => refused(StatusCode::INTERNAL_SERVER_ERROR, e.message.to_string()).into_response(),
    }
}
