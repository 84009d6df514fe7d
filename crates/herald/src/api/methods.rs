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
use crate::auth::now_unix;
use crate::node::{Node, PublishOptions};
use crate::store::{HistoryQuery, StreamPosition};
use crate::wire::control::{self, Action};

fn parse<T: DeserializeOwned>(body: &[u8]) -> Result<T, ApiError> {
    serde_json::from_slice(body)
        .map_err(|e| ApiError::Status(StatusCode::BAD_REQUEST, format!("malformed request: {e}")))
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

#[derive(Deserialize, Default)]
#[serde(default)]
struct PublishRequest {
    channel: String,
    data: Option<Box<RawValue>>,
    b64data: String,
    #[serde(flatten)]
    options: PublishFields,
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct BroadcastRequest {
    channels: Vec<String>,
    data: Option<Box<RawValue>>,
    b64data: String,
    #[serde(flatten)]
    options: PublishFields,
}

/// The options publish and broadcast share.
#[derive(Deserialize, Default, Clone)]
#[serde(default)]
struct PublishFields {
    tags: BTreeMap<String, String>,
    skip_history: bool,
    idempotency_key: String,
}

impl PublishFields {
    fn options(&self) -> PublishOptions {
        PublishOptions {
            info: None,
            tags: self.tags.clone(),
            skip_history: self.skip_history,
            idempotency_key: Some(self.idempotency_key.clone()),
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
    publish_one(node, &req.channel, data, req.options.options()).await
}

async fn broadcast(node: &Node, req: BroadcastRequest) -> ApiResult {
    if req.channels.is_empty() {
        return Err(ApiError::bad_request("channels are required"));
    }
    let data = payload(req.data.as_deref(), &req.b64data)?;
    let mut responses = Vec::with_capacity(req.channels.len());
    for channel in &req.channels {
        responses.push(
            match publish_one(node, channel, data.clone(), req.options.options()).await {
                Ok(result) => json!({ "result": result }),
                Err(e) => json!({ "error": e.to_json() }),
            },
        );
    }
    Ok(json!({ "responses": responses }))
}

/// Which connections a user-targeted method acts on, on whichever node they
/// are.
#[derive(Deserialize, Default)]
#[serde(default)]
struct Target {
    user: String,
    client: String,
    session: String,
}

impl Target {
    fn resolve(self, whitelist: Vec<String>) -> Result<control::Target, ApiError> {
        if self.user.is_empty() && self.client.is_empty() {
            return Err(ApiError::bad_request("user or client is required"));
        }
        let _ = self.session;
        Ok(control::Target {
            user: self.user,
            client: self.client,
            whitelist,
        })
    }
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct SubscribeRequest {
    #[serde(flatten)]
    target: Target,
    channel: String,
    info: Option<Box<RawValue>>,
    data: Option<Box<RawValue>>,
    expire_at: i64,
}

/// A raw JSON field, `null` counting as absent.
fn present(v: Option<Box<RawValue>>) -> Option<Box<RawValue>> {
    v.filter(|r| r.get() != "null")
}

async fn subscribe(node: &Node, req: SubscribeRequest) -> ApiResult {
    node.rules.resolve(&req.channel)?;
    let action = Action::Subscribe {
        channel: req.channel,
        info: present(req.info),
        data: present(req.data),
        expire_at: (req.expire_at > 0).then_some(req.expire_at),
    };
    node.user_command(req.target.resolve(Vec::new())?, action)
        .await?;
    Ok(json!({}))
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct UnsubscribeRequest {
    #[serde(flatten)]
    target: Target,
    channel: String,
}

async fn unsubscribe(node: &Node, req: UnsubscribeRequest) -> ApiResult {
    node.rules.resolve(&req.channel)?;
    let action = Action::Unsubscribe {
        channel: req.channel,
    };
    node.user_command(req.target.resolve(Vec::new())?, action)
        .await?;
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
    #[serde(flatten)]
    target: Target,
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
    node.user_command(req.target.resolve(req.whitelist)?, action)
        .await?;
    Ok(json!({}))
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct RefreshRequest {
    #[serde(flatten)]
    target: Target,
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
    node.user_command(req.target.resolve(Vec::new())?, action)
        .await?;
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
}

async fn batch(node: &Node, req: BatchRequest) -> ApiResult {
    let mut replies = Vec::with_capacity(req.commands.len());
    for command in &req.commands {
        let Some((method, params)) = command.iter().next().filter(|_| command.len() == 1) else {
            replies.push(json!({ "error": ApiError::bad_request("each command needs exactly one method").to_json() }));
            continue;
        };
        if method == "batch" {
            replies.push(
                json!({ "error": ApiError::bad_request("batch cannot be nested").to_json() }),
            );
            continue;
        }
        replies.push(match call(node, method, params.get().as_bytes()).await {
            Ok(result) => json!({ method.as_str(): result }),
            Err(e) => json!({ "error": e.to_json() }),
        });
    }
    Ok(json!({ "replies": replies }))
}
