//! Commands that act on channels without changing subscriptions: publish,
//! and presence and history, which answer "not available" until a namespace
//! keeps presence or history.

use herald_protocol::command::PublishRequest;
use herald_protocol::reply::ReplyBody;
use herald_protocol::{ClientInfo, ProtocolError};

use super::connect::payload;
use super::Session;
use crate::channel::Asker;

type Outcome = Result<ReplyBody, ProtocolError>;

impl Session {
    pub(super) async fn publish(&mut self, req: PublishRequest) -> Outcome {
        let resolved = self.node.rules.resolve(&req.channel)?;
        let sub = self.subs.get(&req.channel);
        let asker = Asker {
            user: self.user().unwrap_or_default(),
            subscribed: sub.is_some(),
        };
        if !self.node.rules.can_publish(&resolved, &asker) {
            return Err(ProtocolError::PERMISSION_DENIED);
        }
        let data = payload(req.data.as_deref())?;
        let conn = self.conn.as_ref().ok_or(ProtocolError::BAD_REQUEST)?;
        let info = match sub.and_then(|s| s.chan_info.clone()) {
            Some(chan_info) => std::sync::Arc::new(ClientInfo {
                chan_info: Some(chan_info),
                ..(*conn.info).clone()
            }),
            None => conn.info.clone(),
        };
        self.node
            .publish(&req.channel, data, Some(info), Default::default())
            .await?;
        Ok(ReplyBody::Publish)
    }

    /// Presence and history are served once a namespace keeps them; until
    /// then a valid channel answers 108 (not available).
    pub(super) fn not_available(&self, channel: &str) -> Outcome {
        self.node.rules.resolve(channel)?;
        Err(ProtocolError::NOT_AVAILABLE)
    }
}
