//! Commands that act on channels without changing subscriptions: publish,
//! presence, presence stats and history, each checked against the
//! namespace's permissions.

use herald_protocol::command::{HistoryRequest, PublishRequest};
use herald_protocol::reply::{HistoryResult, ReplyBody};
use herald_protocol::ProtocolError;

use super::connect::payload;
use super::Session;
use crate::channel::Asker;
use crate::node::PublishOptions;
use crate::store::{HistoryQuery, StreamPosition};

type Outcome = Result<ReplyBody, ProtocolError>;

impl Session {
    fn asker(&self, channel: &str) -> Asker<'_> {
        Asker {
            user: self.user().unwrap_or_default(),
            subscribed: self.subs.contains_key(channel),
        }
    }

    pub(super) async fn publish(&mut self, req: PublishRequest) -> Outcome {
        let resolved = self.node.rules.resolve(&req.channel)?;
        if !self
            .node
            .rules
            .can_publish(&resolved, &self.asker(&req.channel))
        {
            return Err(ProtocolError::PERMISSION_DENIED);
        }
        let data = payload(req.data.as_deref())?;
        let chan_info = self
            .subs
            .get(&req.channel)
            .and_then(|s| s.chan_info.clone());
        let info = self
            .member_info(chan_info)
            .ok_or(ProtocolError::BAD_REQUEST)?;
        let options = PublishOptions {
            info: Some(info),
            ..Default::default()
        };
        self.node.publish(&req.channel, data, options).await?;
        Ok(ReplyBody::Publish)
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
