//! Brokers move publications between nodes. A node subscribes to a channel on
//! the broker while it has local subscribers, publishes through it, and the
//! broker hands every publication, from any node, to the local hub through
//! its [`Inbound`]. The in-memory broker serves a single node; the Redis and
//! NATS brokers connect a cluster.

mod memory;
mod nats;
mod redis;

use std::sync::Arc;

use bytes::Bytes;
use futures_util::future::BoxFuture;
use herald_protocol::{PresenceEvent, Publication};
use thiserror::Error;
use tokio::sync::mpsc;

use crate::cluster::{wire, ClusterEvent};
use crate::hub::Hub;

pub use memory::MemoryBroker;
pub use nats::NatsBroker;
pub use redis::{RedisBroker, RedisLink, RedisShards};

#[derive(Debug, Error, Clone)]
pub enum BrokerError {
    #[error("broker unavailable: {0}")]
    Unavailable(String),
}

pub trait Broker: Send + Sync + 'static {
    /// Sends a publication to every node with subscribers to its channel,
    /// this one included. The call enqueues synchronously, so publications
    /// passed in order leave in order; the future reports the outcome.
    fn publish(&self, publication: Arc<Publication>)
        -> BoxFuture<'static, Result<(), BrokerError>>;
    /// Sends a join or leave event like a publication.
    fn publish_presence(
        &self,
        event: Arc<PresenceEvent>,
    ) -> BoxFuture<'static, Result<(), BrokerError>>;
    /// Sends a control message to every other node.
    fn publish_control(&self, message: Bytes) -> BoxFuture<'static, Result<(), BrokerError>>;
    /// Makes the broker's subscription to `channel` match the hub: subscribed
    /// while the channel has local subscribers, unsubscribed once it has
    /// none. Called after the first subscriber joins and after the last one
    /// leaves; calls may arrive in any order, the hub decides. Resolves once
    /// the broker has confirmed.
    fn sync_channel(&self, channel: &str) -> BoxFuture<'static, Result<(), BrokerError>>;
}

/// An answer a broker's task sends back.
pub(crate) type Reply<R> = tokio::sync::oneshot::Sender<Result<R, BrokerError>>;

/// A request to a broker task to make its subscription to `channel` match
/// the hub.
pub(crate) struct SyncRequest {
    pub channel: String,
    pub done: Reply<()>,
}

/// Queues a request (made around its reply channel) for a broker task now,
/// and resolves with the task's answer.
pub(crate) fn ask<T: Send + 'static, R: Send + 'static>(
    queue: &mpsc::UnboundedSender<T>,
    make: impl FnOnce(Reply<R>) -> T,
) -> BoxFuture<'static, Result<R, BrokerError>> {
    let (reply, answer) = tokio::sync::oneshot::channel();
    let queued = queue.send(make(reply)).is_ok();
    Box::pin(async move {
        let stopped = || BrokerError::Unavailable("broker stopped".into());
        if !queued {
            return Err(stopped());
        }
        answer.await.map_err(|_| stopped())?
    })
}

/// What a broker hands received messages to: the local hub for
/// publications and join/leave events, the node's cluster task for control
/// messages and reconnections.
#[derive(Clone)]
pub struct Inbound {
    hub: Arc<Hub>,
    events: mpsc::UnboundedSender<ClusterEvent>,
}

impl Inbound {
    pub fn new(hub: Arc<Hub>, events: mpsc::UnboundedSender<ClusterEvent>) -> Self {
        Self { hub, events }
    }

    /// A publication or join/leave event in the wire format.
    pub fn message(&self, payload: &[u8]) {
        match wire::decode(payload) {
            Ok(wire::Message::Publication(p)) => {
                self.hub.deliver(&Arc::new(p));
            }
            Ok(wire::Message::Presence(e)) => self.hub.deliver_presence(&Arc::new(e)),
            Err(e) => tracing::warn!(error = %e, "undecodable message from the broker dropped"),
        }
    }

    pub fn control(&self, payload: Bytes) {
        let _ = self.events.send(ClusterEvent::Control(payload));
    }

    /// The broker lost its connection and is subscribed again: anything
    /// published meanwhile was not delivered here.
    pub fn reconnected(&self) {
        let _ = self.events.send(ClusterEvent::Reconnected);
    }

    pub fn has_subscribers(&self, channel: &str) -> bool {
        self.hub.has_channel(channel)
    }

    /// Channels with local subscribers (to subscribe again after a
    /// reconnection).
    pub fn channels(&self) -> Vec<String> {
        self.hub.channels().into_iter().map(|(c, _)| c).collect()
    }
}
