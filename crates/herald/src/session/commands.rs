//! Commands that act on channels without changing subscriptions: publish,
//! presence, presence stats and history, each checked against the
//! namespace's permissions.

use herald_protocol::command::{HistoryRequest, PublishRequest, RpcRequest};
use herald_protocol::reply::{HistoryResult, ReplyBody};
use herald_protocol::ProtocolError;

use super::connect::payload;
use super::Session;
use crate::channel::Asker;
use crate::node::PublishOptions;
use crate::proxy::ChannelEvent;
use crate::store::{HistoryQuery, StreamPosition, Version};

type Outcome = Result<ReplyBody, ProtocolError>;

impl Session {
    fn asker(&self, channel: &str) -> Asker<'_> {
        Asker {
            user: self.user().unwrap_or_default(),
            subscribed: self.subs.contains_key(channel),
        }
    }

    /// A client's publication: allowed by the namespace's permissions, or
    /// by its publish proxy, which may also replace the data and choose how
    /// it is published. `Err(Err(d))`: the backend closes the connection.
    pub(super) async fn publish(
        &mut self,
        req: PublishRequest,
    ) -> Result<Outcome, herald_protocol::Disconnect> {
        let resolved = match self.node.rules.resolve(&req.channel) {
            Ok(r) => r,
            Err(e) => return Ok(Err(e)),
        };
        let data = match payload(req.data.as_deref()) {
            Ok(d) => d,
            Err(e) => return Ok(Err(e)),
        };
        let mut options = PublishOptions::default();
        let data = if resolved.options.publish_proxy_enabled {
            let name = &resolved.options.publish_proxy_name;
            let Some(proxy) = self
                .node
                .proxies
                .channel(ChannelEvent::Publish, name)
                .cloned()
            else {
                return Ok(Err(ProtocolError::NOT_AVAILABLE));
            };
            match self.publish_by_proxy(proxy, &req.channel, data).await {
                Ok(p) => {
                    let r = p.result;
                    options.skip_history = r.skip_history;
                    options.tags = r.tags.into_iter().collect();
                    options.idempotency_key =
                        (!r.idempotency_key.is_empty()).then_some(r.idempotency_key);
                    options.version = (r.version > 0).then_some(Version {
                        version: r.version,
                        epoch: r.version_epoch,
                    });
                    p.data
                }
                Err(refusal) => return super::proxied::split(refusal).map(Err),
            }
        } else if self
            .node
            .rules
            .can_publish(&resolved, &self.asker(&req.channel))
        {
            data
        } else {
            return Ok(Err(ProtocolError::PERMISSION_DENIED));
        };
        Ok(self.publish_as_client(&req.channel, data, options).await)
    }

    async fn publish_as_client(
        &self,
        channel: &str,
        data: bytes::Bytes,
        mut options: PublishOptions,
    ) -> Outcome {
        let chan_info = self.subs.get(channel).and_then(|s| s.chan_info.clone());
        let info = self
            .member_info(chan_info)
            .ok_or(ProtocolError::BAD_REQUEST)?;
        options.info = Some(info);
        self.node.publish(channel, data, options).await?;
        Ok(ReplyBody::Publish)
    }

    /// A client RPC: the built-in ping method (`rpc.ping`), or the proxy
    /// of the method's namespace. 104 where nothing serves the method.
    pub(super) async fn rpc(
        &self,
        req: RpcRequest,
    ) -> Result<Outcome, herald_protocol::Disconnect> {
        let rpc = &self.node.config.rpc;
        if rpc.ping.enabled && req.method == rpc.ping.method {
            return Ok(Ok(ReplyBody::Rpc(None)));
        }
        if !self.node.proxies.serves_rpc() {
            return Ok(Err(ProtocolError::METHOD_NOT_FOUND));
        }
        let Some(options) = rpc.options(&req.method) else {
            return Ok(Err(ProtocolError::METHOD_NOT_FOUND));
        };
        if !options.proxy_enabled {
            return Ok(Err(ProtocolError::NOT_AVAILABLE));
        }
        let Some(proxy) = self.node.proxies.rpc(&options.proxy_name).cloned() else {
            return Ok(Err(ProtocolError::NOT_AVAILABLE));
        };
        let data = req
            .data
            .as_deref()
            .map(|d| d.get().as_bytes())
            .unwrap_or_default();
        match self.rpc_by_proxy(proxy, &req.method, data).await {
            Ok(reply) => Ok(Ok(reply)),
            Err(refusal) => super::proxied::split(refusal).map(Err),
        }
    }

    /// Presence (or its counts): 108 where the namespace keeps none.
    pub(super) async fn presence(&self, channel: &str, stats: bool) -> Outcome {
        let resolved = self.node.rules.resolve(channel)?;
        if !resolved.options.presence {
            return Err(ProtocolError::NOT_AVAILABLE);
        }
        if !self
            .node
            .rules
            .can_read_presence(&resolved, &self.asker(channel))
        {
            return Err(ProtocolError::PERMISSION_DENIED);
        }
        if stats {
            let (num_clients, num_users) = self.node.presence_stats(channel).await?;
            return Ok(ReplyBody::PresenceStats {
                num_clients,
                num_users,
            });
        }
        Ok(ReplyBody::Presence(
            self.node.presence_get(channel).await?.into_iter().collect(),
        ))
    }

    /// History with limit (0: position only; negative or above the maximum:
    /// the maximum), `since` and `reverse`.
    pub(super) async fn history(&self, req: HistoryRequest) -> Outcome {
        let resolved = self.node.rules.resolve(&req.channel)?;
        if self.node.stream_options(resolved.options).is_none() {
            return Err(ProtocolError::NOT_AVAILABLE);
        }
        if !self
            .node
            .rules
            .can_read_history(&resolved, &self.asker(&req.channel))
        {
            return Err(ProtocolError::PERMISSION_DENIED);
        }
        let max = self
            .node
            .config
            .client
            .history_limit()
            .unwrap_or(usize::MAX);
        let limit = match req.limit {
            0 => None,
            n if n < 0 => Some(max),
            n => Some((n as usize).min(max)),
        };
        let since = req.since.map(|s| StreamPosition {
            offset: s.offset,
            epoch: s.epoch,
        });
        let page = self
            .node
            .history(
                &req.channel,
                HistoryQuery {
                    since,
                    limit,
                    reverse: req.reverse,
                },
            )
            .await?;
        Ok(ReplyBody::History(HistoryResult {
            publications: page.publications,
            epoch: page.position.epoch,
            offset: page.position.offset,
        }))
    }
}
