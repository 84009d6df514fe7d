//! The server API methods. Each request is parsed straight from the body so
//! that payloads stay raw JSON; unknown fields are ignored.

use std::collections::{BTreeMap, HashMap};

use axum::http::StatusCode;
use base64::Engine as _;
use bytes::Bytes;
use futures_util::future::BoxFuture;
use herald_protocol::{Disconnect, ProtocolError};
use serde::de::DeserializeOwned;
use serde::Deserialize;
use serde_json::value::RawValue;
use serde_json::{json, Map, Value};

use super::{ApiError, ApiResult};
use crate::auth::{now_unix, Overrides, RawOverrides};
use crate::node::{Node, PublishOptions};
use crate::store::{HistoryQuery, StreamPosition, Version};
use crate::wire::control::{self, Action};

/// A method's request; a field of the wrong type is named in the error
/// (`malformed request: channel: invalid type: …`).
fn parse<T: DeserializeOwned>(body: &[u8]) -> Result<T, ApiError> {
    let mut json = serde_json::Deserializer::from_slice(body);
    serde_path_to_error::deserialize(&mut json).map_err(|e| {
        let path = e.path().to_string();
        let message = if path == "." {
            format!("malformed request: {}", e.inner())
        } else {
            format!("malformed request: {path}: {}", e.inner())
        };
        ApiError::Status(StatusCode::BAD_REQUEST, message)
    })
}

/// Runs one method; `body` is its JSON parameters.
pub fn call<'a>(node: &'a Node, method: &'a str, body: &'a [u8]) -> BoxFuture<'a, ApiResult> {
    Box::pin(async move {
        match method {
            "publish" => publish(node, parse(body)?).await,
            "broadcast" => broadcast(node, parse(body)?).await,
            "subscribe" => subscribe(node, parse(body)?).await,
            "unsubscribe" => unsubscribe(node, parse(body)?).await,
            "disconnect" => disconnect(node, parse(body)?).await,
            "refresh" => refresh(node, parse(body)?).await,
            "channels" => channels(node, parse(body)?),
            "info" => Ok(info(node)),
            "batch" => batch(node, parse(body)?).await,
            "presence" => presence(node, parse(body)?, false).await,
            "presence_stats" => presence(node, parse(body)?, true).await,
            "history" => history(node, parse(body)?).await,
            "history_remove" => {
                let req: ChannelOnly = parse(body)?;
                node.remove_history(&req.channel).await?;
                Ok(json!({}))
            }
            _ => Err(ApiError::Status(
                StatusCode::NOT_FOUND,
                format!("unknown API method {method:?}"),
            )),
        }
    })
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct ChannelOnly {
    channel: String,
}

/// A publish, or a broadcast (`channels` instead of `channel`).
#[derive(Deserialize, Default)]
#[serde(default)]
struct PublishRequest {
    channel: String,
    channels: Vec<String>,
    data: Option<Box<RawValue>>,
    b64data: String,
    tags: BTreeMap<String, String>,
    skip_history: bool,
    idempotency_key: String,
    /// Publish only when above the stream's last version (0: no version).
    version: u64,
    /// The version's epoch: a new one starts versions over.
    version_epoch: String,
    /// Subscribers that negotiated deltas may get this publication as one;
    /// no namespace here offers deltas, so all get it whole.
    delta: bool,
}

impl PublishRequest {
    fn options(&self) -> PublishOptions {
        PublishOptions {
            info: None,
            tags: self.tags.clone(),
            skip_history: self.skip_history,
            idempotency_key: Some(self.idempotency_key.clone()),
            version: (self.version > 0).then(|| Version {
                version: self.version,
                epoch: self.version_epoch.clone(),
            }),
        }
    }
}

/// The payload of a publish: `data` as raw JSON, or `b64data` holding JSON.
fn payload(data: Option<&RawValue>, b64data: &str) -> Result<Bytes, ApiError> {
    if let Some(raw) = data.filter(|r| r.get() != "null") {
        return Ok(Bytes::copy_from_slice(raw.get().as_bytes()));
    }
    if !b64data.is_empty() {
        let raw = base64::engine::general_purpose::STANDARD
            .decode(b64data)
            .map_err(|e| ApiError::bad_request(format!("b64data is not base64: {e}")))?;
        if !herald_protocol::json::is_valid_json(&raw) {
            return Err(ApiError::bad_request(
                "b64data must hold JSON for JSON clients",
            ));
        }
        return Ok(Bytes::from(raw));
    }
    Err(ApiError::bad_request("data is required"))
}

async fn publish_one(
    node: &Node,
    channel: &str,
    data: Bytes,
    options: PublishOptions,
) -> ApiResult {
    let r = node.publish(channel, data, options).await?;
    if r.epoch.is_empty() {
        return Ok(json!({}));
    }
    Ok(json!({ "offset": r.offset, "epoch": r.epoch }))
}

async fn presence(node: &Node, req: ChannelOnly, stats: bool) -> ApiResult {
    if !node.rules.resolve(&req.channel)?.options.presence {
        return Err(ProtocolError::NOT_AVAILABLE.into());
    }
    if stats {
        let (num_clients, num_users) = node.presence_stats(&req.channel).await?;
        return Ok(json!({ "num_clients": num_clients, "num_users": num_users }));
    }
    let mut out = Map::new();
    for (client, info) in node.presence_get(&req.channel).await? {
        out.insert(
            client,
            raw_json(herald_protocol::json::encode_client_info(&info)),
        );
    }
    Ok(json!({ "presence": out }))
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct HistoryRequest {
    channel: String,
    limit: i64,
    since: Option<Since>,
    reverse: bool,
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct Since {
    offset: u64,
    epoch: String,
}

async fn history(node: &Node, req: HistoryRequest) -> ApiResult {
    // The API has no per-client cap: a negative limit means everything.
    let limit = match req.limit {
        0 => None,
        n if n < 0 => Some(usize::MAX),
        n => Some(n as usize),
    };
    let since = req.since.map(|s| StreamPosition {
        offset: s.offset,
        epoch: s.epoch,
    });
    let query = HistoryQuery {
        since,
        limit,
        reverse: req.reverse,
    };
    let page = node.history(&req.channel, query).await?;
    let pubs: Vec<Value> = page
        .publications
        .iter()
        .map(|p| raw_json(herald_protocol::json::encode_publication(p)))
        .collect();
    Ok(
        json!({ "publications": pubs, "epoch": page.position.epoch, "offset": page.position.offset }),
    )
}

/// Embeds already encoded JSON into a reply.
fn raw_json(bytes: Vec<u8>) -> Value {
    serde_json::from_slice(&bytes).unwrap_or_else(|e| {
        // Payloads are validated on the way in; this would be a stored defect.
        tracing::error!(error = %e, "stored publication is not valid JSON");
        Value::Null
    })
}

async fn publish(node: &Node, req: PublishRequest) -> ApiResult {
    let data = payload(req.data.as_deref(), &req.b64data)?;
    publish_one(node, &req.channel, data, req.options()).await
}

async fn broadcast(node: &Node, req: PublishRequest) -> ApiResult {
    if req.channels.is_empty() {
        return Err(ApiError::bad_request("channels are required"));
    }
    let data = payload(req.data.as_deref(), &req.b64data)?;
    let mut responses = Vec::with_capacity(req.channels.len());
    for channel in &req.channels {
        responses.push(
            match publish_one(node, channel, data.clone(), req.options()).await {
                Ok(result) => json!({ "result": result }),
                Err(e) => json!({ "error": e.to_json() }),
            },
        );
    }
    Ok(json!({ "responses": responses }))
}

/// Which connections a user-targeted method acts on, on whichever node they
/// are: a user's, one client's, or one session's (connections of
/// unidirectional transports have sessions; WebSocket ones have none).
fn target(
    user: String,
    client: String,
    session: String,
    whitelist: Vec<String>,
) -> Result<control::Target, ApiError> {
    if user.is_empty() && client.is_empty() {
        return Err(ApiError::bad_request("user or client is required"));
    }
    Ok(control::Target {
        user,
        client,
        session,
        whitelist,
    })
}

/// A position in a stream, as the API writes it.
#[derive(Deserialize, Default)]
#[serde(default)]
struct Position {
    offset: u64,
    epoch: String,
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct SubscribeRequest {
    user: String,
    client: String,
    session: String,
    channel: String,
    info: Option<Box<RawValue>>,
    b64info: String,
    data: Option<Box<RawValue>>,
    b64data: String,
    expire_at: i64,
    recover_since: Option<Position>,
    #[serde(rename = "override")]
    overrides: Option<RawOverrides>,
}

/// A raw JSON field, `null` counting as absent.
fn present(v: Option<Box<RawValue>>) -> Option<Box<RawValue>> {
    v.filter(|r| r.get() != "null")
}

/// A JSON field given as `name` (raw JSON) or `b64name` (base64 of JSON).
fn json_field(
    raw: Option<Box<RawValue>>,
    b64: &str,
    b64_name: &str,
) -> Result<Option<Box<RawValue>>, ApiError> {
    if let Some(raw) = present(raw) {
        return Ok(Some(raw));
    }
    if b64.is_empty() {
        return Ok(None);
    }
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(b64)
        .map_err(|e| ApiError::bad_request(format!("{b64_name} is not base64: {e}")))?;
    let text = String::from_utf8(bytes)
        .map_err(|_| ApiError::bad_request(format!("{b64_name} must hold JSON")))?;
    RawValue::from_string(text)
        .map(Some)
        .map_err(|_| ApiError::bad_request(format!("{b64_name} must hold JSON")))
}

async fn subscribe(node: &Node, req: SubscribeRequest) -> ApiResult {
    node.rules.resolve(&req.channel)?;
    let action = Action::Subscribe {
        channel: req.channel,
        info: json_field(req.info, &req.b64info, "b64info")?,
        data: json_field(req.data, &req.b64data, "b64data")?,
        expire_at: (req.expire_at > 0).then_some(req.expire_at),
        overrides: req.overrides.map(Overrides::from).unwrap_or_default(),
        recover_since: req.recover_since.map(|p| control::Position {
            offset: p.offset,
            epoch: p.epoch,
        }),
    };
    let target = target(req.user, req.client, req.session, Vec::new())?;
    node.user_command(target, action).await?;
    Ok(json!({}))
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct UnsubscribeRequest {
    user: String,
    client: String,
    session: String,
    channel: String,
}

async fn unsubscribe(node: &Node, req: UnsubscribeRequest) -> ApiResult {
    node.rules.resolve(&req.channel)?;
    let action = Action::Unsubscribe {
        channel: req.channel,
    };
    let target = target(req.user, req.client, req.session, Vec::new())?;
    node.user_command(target, action).await?;
    Ok(json!({}))
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct DisconnectCode {
    code: u16,
    reason: String,
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct DisconnectRequest {
    user: String,
    client: String,
    session: String,
    whitelist: Vec<String>,
    disconnect: Option<DisconnectCode>,
}

async fn disconnect(node: &Node, req: DisconnectRequest) -> ApiResult {
    let d = match req.disconnect {
        Some(d) if !(3000..=4999).contains(&d.code) => {
            return Err(ApiError::bad_request(
                "disconnect code must be within 3000..=4999",
            ))
        }
        Some(d) => Disconnect::new(d.code, d.reason),
        None => Disconnect::force_disconnect(),
    };
    let action = Action::Disconnect {
        code: d.code,
        reason: d.reason,
    };
    let target = target(req.user, req.client, req.session, req.whitelist)?;
    node.user_command(target, action).await?;
    Ok(json!({}))
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct RefreshRequest {
    user: String,
    client: String,
    session: String,
    expired: bool,
    expire_at: i64,
    info: Option<Box<RawValue>>,
}

async fn refresh(node: &Node, req: RefreshRequest) -> ApiResult {
    if req.expire_at > 0 && req.expire_at <= now_unix() && !req.expired {
        return Err(ApiError::bad_request("expire_at is in the past"));
    }
    let action = Action::Refresh {
        expired: req.expired,
        expire_at: (req.expire_at > 0).then_some(req.expire_at),
        info: present(req.info),
    };
    let target = target(req.user, req.client, req.session, Vec::new())?;
    node.user_command(target, action).await?;
    Ok(json!({}))
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct ChannelsRequest {
    pattern: String,
}

fn channels(node: &Node, req: ChannelsRequest) -> ApiResult {
    let filter = if req.pattern.is_empty() {
        None
    } else {
        crate::pattern::glob(&req.pattern, false)
    };
    let mut out = Map::new();
    for (name, n) in node.hub.channels() {
        if filter.as_ref().is_none_or(|re| re.is_match(&name)) {
            out.insert(name, json!({ "num_clients": n }));
        }
    }
    Ok(json!({ "channels": out }))
}

fn info(node: &Node) -> Value {
    json!({ "nodes": node.nodes() })
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct BatchRequest {
    commands: Vec<HashMap<String, Box<RawValue>>>,
    /// Run the commands at once rather than one after the other; replies
    /// keep the commands' order either way.
    parallel: bool,
}

async fn batch(node: &Node, req: BatchRequest) -> ApiResult {
    let replies = req.commands.iter().map(|command| batch_one(node, command));
    let replies: Vec<Value> = if req.parallel {
        futures_util::future::join_all(replies).await
    } else {
        let mut done = Vec::with_capacity(req.commands.len());
        for reply in replies {
            done.push(reply.await);
        }
        done
    };
    Ok(json!({ "replies": replies }))
}

/// One command of a batch: `{"method": params}`, answered with
/// `{"method": result}` or `{"error": …}`.
async fn batch_one(node: &Node, command: &HashMap<String, Box<RawValue>>) -> Value {
    let Some((method, params)) = command.iter().next().filter(|_| command.len() == 1) else {
        return json!({ "error": ApiError::bad_request("each command needs exactly one method").to_json() });
    };
    if method == "batch" {
        return json!({ "error": ApiError::bad_request("batch cannot be nested").to_json() });
    }
    match call(node, method, params.get().as_bytes()).await {
        Ok(result) => json!({ method.as_str(): result }),
        Err(e) => json!({ "error": e.to_json() }),
    }
}
