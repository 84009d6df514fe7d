//! The server API's methods, one implementation each, whatever carried the
//! call: [`read`] makes a [`Request`] of an HTTP method name and JSON body,
//! the gRPC API makes one of its messages, and [`execute`] runs it.

use std::collections::HashMap;

use axum::http::StatusCode;
use base64::Engine as _;
use bytes::Bytes;
use futures_util::future::BoxFuture;
use herald_protocol::{Disconnect, ProtocolError};
use serde::de::DeserializeOwned;
use serde_json::value::RawValue;

use super::types::*;
use super::ApiError;
use crate::auth::now_unix;
use crate::cluster::AccessError;
use crate::node::{Node, PublishOptions};
use crate::store::event_queue::EventQueue;
use crate::store::{HistoryQuery, StreamPosition, Version};
use crate::wire::control::{self, AccessChange, Action, Question};

/// A method's parameters; a field of the wrong type is named in the error
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

/// The request of the HTTP API's `method` with JSON parameters `body`.
pub fn read(method: &str, body: &[u8]) -> Result<Request, ApiError> {
    Ok(match method {
        "publish" => Request::Publish(parse(body)?),
        "broadcast" => Request::Broadcast(parse(body)?),
        "subscribe" => Request::Subscribe(parse(body)?),
        "unsubscribe" => Request::Unsubscribe(parse(body)?),
        "disconnect" => Request::Disconnect(parse(body)?),
        "refresh" => Request::Refresh(parse(body)?),
        "presence" => Request::Presence(parse(body)?),
        "presence_stats" => Request::PresenceStats(parse(body)?),
        "history" => Request::History(parse(body)?),
        "history_remove" => Request::HistoryRemove(parse(body)?),
        "channels" => Request::Channels(parse(body)?),
        "info" => Request::Info(parse(body)?),
        "block_user" => Request::BlockUser(parse(body)?),
        "unblock_user" => Request::UnblockUser(parse(body)?),
        "revoke_token" => Request::RevokeToken(parse(body)?),
        "invalidate_user_tokens" => Request::InvalidateUserTokens(parse(body)?),
        "webhook_dead_letters" => Request::WebhookDeadLetters(parse(body)?),
        "webhook_redrive" => Request::WebhookRedrive(parse(body)?),
        "batch" => {
            let batch: BatchRequest = parse(body)?;
            let commands = batch.commands.iter().map(read_command).collect();
            Request::Batch {
                commands,
                parallel: batch.parallel,
            }
        }
        _ => {
            return Err(ApiError::Status(
                StatusCode::NOT_FOUND,
                format!("unknown API method {method:?}"),
            ))
        }
    })
}

/// One command of a batch: `{"method": params}`.
fn read_command(command: &HashMap<String, Box<RawValue>>) -> Result<Request, ApiError> {
    let Some((method, params)) = command.iter().next().filter(|_| command.len() == 1) else {
        return Err(ApiError::bad_request(
            "each command needs exactly one method",
        ));
    };
    if method == "batch" {
        return Err(ApiError::bad_request("batch cannot be nested"));
    }
    read(method, params.get().as_bytes())
}

/// [`execute`], its time recorded under the method and `protocol`
/// (`http`, `grpc`).
pub async fn execute_timed(
    node: &Node,
    request: Request,
    protocol: &'static str,
) -> Result<Response, ApiError> {
    let method = request.method();
    let started = std::time::Instant::now();
    let outcome = execute(node, request).await;
    node.metrics.api_call(method, protocol, started.elapsed());
    outcome
}

/// Runs one method.
pub fn execute(node: &Node, request: Request) -> BoxFuture<'_, Result<Response, ApiError>> {
    Box::pin(async move {
        let empty = Response::Empty(Empty {});
        Ok(match request {
            Request::Publish(req) => Response::Publish(publish(node, req).await?),
            Request::Broadcast(req) => Response::Broadcast(broadcast(node, req).await?),
            Request::Subscribe(req) => {
                subscribe(node, req).await?;
                empty
            }
            Request::Unsubscribe(req) => {
                unsubscribe(node, req).await?;
                empty
            }
            Request::Disconnect(req) => {
                disconnect(node, req).await?;
                empty
            }
            Request::Refresh(req) => {
                refresh(node, req).await?;
                empty
            }
            Request::Presence(req) => Response::Presence(presence(node, req).await?),
            Request::PresenceStats(req) => {
                Response::PresenceStats(presence_stats(node, req).await?)
            }
            Request::History(req) => Response::History(history(node, req).await?),
            Request::HistoryRemove(req) => {
                node.remove_history(&req.channel)
                    .await
                    .map_err(|e| about_history(node, &req.channel, e))?;
                empty
            }
            Request::Channels(req) => Response::Channels(channels(node, req).await?),
            Request::Info(_) => Response::Info(InfoResult {
                nodes: node.nodes(),
            }),
            Request::WebhookDeadLetters(req) => {
                Response::WebhookDeadLetters(dead_letters(node, req).await?)
            }
            Request::WebhookRedrive(req) => Response::WebhookRedrive(redrive(node, req).await?),
            Request::BlockUser(req) => {
                required("user", &req.user)?;
                let expire_at = expiry(req.expire_at)?;
                access(
                    node,
                    AccessChange::Block {
                        user: req.user,
                        expire_at,
                    },
                )
                .await?;
                empty
            }
            Request::UnblockUser(req) => {
                required("user", &req.user)?;
                access(node, AccessChange::Unblock { user: req.user }).await?;
                empty
            }
            Request::RevokeToken(req) => {
                required("uid", &req.uid)?;
                let expire_at = expiry(req.expire_at)?;
                access(
                    node,
                    AccessChange::RevokeToken {
                        uid: req.uid,
                        expire_at,
                    },
                )
                .await?;
                empty
            }
            Request::InvalidateUserTokens(req) => {
                required("user", &req.user)?;
                let change = AccessChange::InvalidateUserTokens {
                    user: req.user,
                    channel: req.channel,
                    issued_before: if req.issued_before > 0 {
                        req.issued_before
                    } else {
                        now_unix()
                    },
                    expire_at: expiry(req.expire_at)?,
                };
                access(node, change).await?;
                empty
            }
            Request::Batch { commands, parallel } => {
                Response::Batch(batch(node, commands, parallel).await)
            }
        })
    })
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

fn publish_options(req: &PublishRequest) -> PublishOptions {
    PublishOptions {
        info: None,
        tags: req.tags.clone(),
        skip_history: req.skip_history,
        idempotency_key: Some(req.idempotency_key.clone()),
        version: (req.version > 0).then(|| Version {
            version: req.version,
            epoch: req.version_epoch.clone(),
        }),
        delta: req.delta,
    }
}

async fn publish_one(
    node: &Node,
    channel: &str,
    data: Bytes,
    options: PublishOptions,
) -> Result<PublishResult, ApiError> {
    let r = node
        .publish(channel, data, options)
        .await
        .map_err(|e| about(node, channel, e))?;
    Ok(PublishResult {
        offset: r.offset,
        epoch: r.epoch,
    })
}

async fn publish(node: &Node, req: PublishRequest) -> Result<PublishResult, ApiError> {
    let data = payload(req.data.as_deref(), &req.b64data)?;
    publish_one(node, &req.channel, data, publish_options(&req)).await
}

async fn broadcast(node: &Node, req: PublishRequest) -> Result<BroadcastResult, ApiError> {
    if req.channels.is_empty() {
        return Err(ApiError::bad_request("channels are required"));
    }
    let data = payload(req.data.as_deref(), &req.b64data)?;
    let mut responses = Vec::with_capacity(req.channels.len());
    for channel in &req.channels {
        let published = publish_one(node, channel, data.clone(), publish_options(&req)).await;
        responses.push(BroadcastReply(published));
    }
    Ok(BroadcastResult { responses })
}

/// The webhook event queue: 108 where no webhook is configured.
fn event_queue(node: &Node) -> Result<&dyn EventQueue, ApiError> {
    match &node.webhooks {
        Some(w) => Ok(w.store().as_ref()),
        None => Err(ApiError::from(ProtocolError::NOT_AVAILABLE)),
    }
}

fn storage_failed(e: crate::store::StoreError) -> ApiError {
    tracing::warn!(error = %crate::report::Chain(&e), "webhook storage failed");
    ApiError::from(ProtocolError::INTERNAL)
}

async fn dead_letters(
    node: &Node,
    req: WebhookDeadLettersRequest,
) -> Result<WebhookDeadLettersResult, ApiError> {
    let limit = match req.limit {
        n if n <= 0 => 100,
        n => n.min(1000),
    };
    let letters = event_queue(node)?
        .dead_letters(&req.webhook, limit)
        .await
        .map_err(storage_failed)?;
    let dead_letters = letters
        .into_iter()
        .map(|d| DeadLetterDoc {
            body: serde_json::from_str(&d.body).unwrap_or(serde_json::Value::String(d.body)),
            id: d.id,
            webhook: d.hook,
            event: d.event,
            attempts: d.attempts,
            last_error: d.last_error,
            created_ms: d.created_ms,
        })
        .collect();
    Ok(WebhookDeadLettersResult { dead_letters })
}

async fn redrive(
    node: &Node,
    req: WebhookRedriveRequest,
) -> Result<WebhookRedriveResult, ApiError> {
    let redriven = event_queue(node)?
        .redrive(&req.ids, &req.webhook, crate::clock::now_ms())
        .await
        .map_err(storage_failed)?;
    Ok(WebhookRedriveResult { redriven })
}

/// A channel with presence: 108 where the namespace keeps none.
fn with_presence(node: &Node, channel: &str) -> Result<(), ApiError> {
    let resolved = node
        .rules
        .resolve(channel)
        .map_err(|e| about(node, channel, e))?;
    if !resolved.options.presence {
        return Err(ApiError::Reply {
            code: ProtocolError::NOT_AVAILABLE.code,
            message: "not available: presence is off in this channel's namespace".into(),
        });
    }
    Ok(())
}

/// The error `e` about `channel`, its message naming the setting at fault
/// where there is one (a channel of no namespace, say).
fn about(node: &Node, channel: &str, e: ProtocolError) -> ApiError {
    match node.rules.explain(channel, &e) {
        Some(message) => ApiError::Reply {
            code: e.code,
            message,
        },
        None => e.into(),
    }
}

/// [`about`] for history, whose 108 means the namespace keeps none.
fn about_history(node: &Node, channel: &str, e: ProtocolError) -> ApiError {
    if e.code != ProtocolError::NOT_AVAILABLE.code {
        return about(node, channel, e);
    }
    ApiError::Reply {
        code: e.code,
        message: "not available: this channel's namespace keeps no history (history_size and history_ttl)"
            .into(),
    }
}

async fn presence(node: &Node, req: ChannelRequest) -> Result<PresenceResult, ApiError> {
    with_presence(node, &req.channel)?;
    let presence = node.presence_get(&req.channel).await?;
    Ok(PresenceResult { presence })
}

async fn presence_stats(node: &Node, req: ChannelRequest) -> Result<PresenceStatsResult, ApiError> {
    with_presence(node, &req.channel)?;
    let (num_clients, num_users) = node.presence_stats(&req.channel).await?;
    Ok(PresenceStatsResult {
        num_clients,
        num_users,
    })
}

async fn history(node: &Node, req: HistoryRequest) -> Result<HistoryResult, ApiError> {
    // The API has no per-client cap: a negative limit means everything.
    let limit = match req.limit {
        0 => None,
        n if n < 0 => Some(usize::MAX),
        n => Some(usize::try_from(n).unwrap_or(usize::MAX)),
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
    let page = node
        .history(&req.channel, query)
        .await
        .map_err(|e| about_history(node, &req.channel, e))?;
    Ok(HistoryResult {
        publications: page.publications,
        epoch: page.position.epoch,
        offset: page.position.offset,
    })
}

/// Which connections a user-targeted method acts on, on whichever node they
/// are: a user's, one client's, or one session's (connections of the
/// emulated transports, `http_stream` and `sse`, have sessions; others have
/// none).
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

/// A raw JSON field, `null` counting as absent.
fn present(v: Json) -> Json {
    v.filter(|r| r.get() != "null")
}

/// A JSON field given as `name` (raw JSON) or `b64name` (base64 of JSON).
fn json_field(raw: Json, b64: &str, b64_name: &str) -> Result<Json, ApiError> {
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

async fn subscribe(node: &Node, req: SubscribeRequest) -> Result<(), ApiError> {
    node.rules.resolve(&req.channel)?;
    let action = Action::Subscribe {
        channel: req.channel,
        info: json_field(req.info, &req.b64info, "b64info")?,
        data: json_field(req.data, &req.b64data, "b64data")?,
        expire_at: (req.expire_at > 0).then_some(req.expire_at),
        overrides: req.overrides.unwrap_or_default(),
        recover_since: req.recover_since.map(|p| control::Position {
            offset: p.offset,
            epoch: p.epoch,
        }),
    };
    let target = target(req.user, req.client, req.session, Vec::new())?;
    node.user_command(target, action).await?;
    Ok(())
}

async fn unsubscribe(node: &Node, req: UnsubscribeRequest) -> Result<(), ApiError> {
    node.rules.resolve(&req.channel)?;
    let action = Action::Unsubscribe {
        channel: req.channel,
    };
    let target = target(req.user, req.client, req.session, Vec::new())?;
    node.user_command(target, action).await?;
    Ok(())
}

async fn disconnect(node: &Node, req: DisconnectRequest) -> Result<(), ApiError> {
    let d = match req.disconnect {
        Some(d) => match u16::try_from(d.code) {
            Ok(code) if (3000..=4999).contains(&code) => Disconnect::new(code, d.reason),
            _ => {
                return Err(ApiError::bad_request(
                    "disconnect code must be within 3000..=4999",
                ))
            }
        },
        None => Disconnect::force_disconnect(),
    };
    let action = Action::Disconnect {
        code: d.code,
        reason: d.reason,
    };
    let target = target(req.user, req.client, req.session, req.whitelist)?;
    node.user_command(target, action).await?;
    Ok(())
}

fn required(name: &str, value: &str) -> Result<(), ApiError> {
    if value.is_empty() {
        return Err(ApiError::bad_request(format!("{name} required")));
    }
    Ok(())
}

/// An access rule's `expire_at`: 0 (no end) or a time to come.
fn expiry(expire_at: i64) -> Result<i64, ApiError> {
    if expire_at < 0 || (expire_at > 0 && expire_at <= now_unix()) {
        return Err(ApiError::bad_request("expire_at is in the past"));
    }
    Ok(expire_at)
}

async fn access(node: &Node, change: AccessChange) -> Result<(), ApiError> {
    node.cluster().access_change(change).await.map_err(|e| {
        tracing::warn!(error = %crate::report::Chain(&e), "access change failed");
        match e {
            AccessError::Save(_) => ProtocolError::INTERNAL,
            AccessError::Broker(_) => ProtocolError::BROKER_UNAVAILABLE,
        }
        .into()
    })
}

async fn refresh(node: &Node, req: RefreshRequest) -> Result<(), ApiError> {
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
    Ok(())
}

/// Channels with subscribers anywhere in the cluster, with how many.
async fn channels(node: &Node, req: ChannelsRequest) -> Result<ChannelsResult, ApiError> {
    let filter = if req.pattern.is_empty() {
        None
    } else {
        crate::pattern::glob(&req.pattern, false)
    };
    // The other nodes send only names that can match: those starting with
    // the pattern's part before its first `*`.
    let prefix = req.pattern.split('*').next().unwrap_or_default();
    let question = Question::Channels {
        prefix: prefix.to_string(),
    };
    let counts = node.cluster().count(question).await.map_err(|e| {
        tracing::warn!(error = %crate::report::Chain(&e), "channels not asked of the other nodes");
        ProtocolError::BROKER_UNAVAILABLE
    })?;
    let channels = counts
        .into_iter()
        .filter(|(name, _)| filter.as_ref().is_none_or(|re| re.is_match(name)))
        .map(|(name, n)| {
            let num_clients = u32::try_from(n).unwrap_or(u32::MAX);
            (name, ChannelInfo { num_clients })
        })
        .collect();
    Ok(ChannelsResult { channels })
}

async fn batch(
    node: &Node,
    commands: Vec<Result<Request, ApiError>>,
    parallel: bool,
) -> BatchResult {
    let replies = commands.into_iter().map(|command| async move {
        match command {
            Ok(Request::Batch { .. }) => BatchReply {
                method: "batch",
                result: Err(ApiError::bad_request("batch cannot be nested")),
            },
            Ok(request) => BatchReply {
                method: request.method(),
                result: execute(node, request).await,
            },
            Err(e) => BatchReply {
                method: "error",
                result: Err(e),
            },
        }
    });
    let replies = if parallel {
        futures_util::future::join_all(replies).await
    } else {
        let mut done = Vec::new();
        for reply in replies {
            done.push(reply.await);
        }
        done
    };
    BatchResult { replies }
}
