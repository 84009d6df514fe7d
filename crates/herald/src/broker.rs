//! Brokers move publications between nodes. A node subscribes to a channel on
//! the broker while it has local subscribers, publishes through it, and the
//! broker hands every publication, from any node, to the local hub through
//! its [`Inbound`]. The in-memory broker serves a single node; the Redis and
//! NATS brokers connect a cluster. Which one a node uses is decided in one
//! place, [`crate::engine`].

mod memory;
mod nats;
mod redis;

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::future::BoxFuture;
use herald_protocol::{PresenceEvent, Publication};
use thiserror::Error;
use tokio::sync::{mpsc, oneshot};

use crate::hub::Hub;
use crate::redis_link::RedisError;
use crate::wire;

pub use memory::MemoryBroker;
pub use nats::NatsBroker;
pub use redis::RedisBroker;

#[derive(Debug, Error)]
pub enum BrokerError {
    #[error("broker unavailable")]
    Redis(#[from] RedisError),
    #[error("cannot connect to NATS at {url}")]
    NatsConnect {
        url: String,
        #[source]
        source: async_nats::ConnectError,
    },
    #[error("NATS is unreachable; reconnecting")]
    NatsDown,
    #[error("NATS request failed")]
    Nats(#[source] Box<dyn std::error::Error + Send + Sync>),
    #[error("the broker did not answer within {0:?}")]
    Timeout(Duration),
    #[error("too many messages queued for the broker")]
    QueueFull,
    #[error("the broker has stopped")]
    Stopped,
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
    /// Whether the broker answers now (for `/health`).
    fn check(&self) -> BoxFuture<'static, Result<(), BrokerError>>;
    /// Hands what was published so far on to the broker's server, bounded
    /// by the broker's own timeout; the node calls it last when it stops.
    /// Nothing to do where a publish completes only once sent.
    fn flush(&self) -> BoxFuture<'static, ()> {
        Box::pin(std::future::ready(()))
    }
}

/// What a broker reports to its node besides publications.
#[derive(Debug)]
pub enum BrokerEvent {
    /// A control message from another node ([`wire::control`]).
    Control(Bytes),
    /// The broker lost its connection and is subscribed again: anything
    /// published meanwhile was not delivered here.
    Reconnected,
}

/// Where a broker hands what it receives: publications and join/leave
/// events to the local hub, everything else to the node as a
/// [`BrokerEvent`].
#[derive(Clone)]
pub struct Inbound {
    hub: Arc<Hub>,
    /// Bounded; a broker's task waits for room. The node's task that reads
    /// it never waits on a broker's receiving side, so this cannot deadlock.
    events: mpsc::Sender<BrokerEvent>,
}

impl Inbound {
    pub fn new(hub: Arc<Hub>, events: mpsc::Sender<BrokerEvent>) -> Self {
        Self { hub, events }
    }

    /// A publication or join/leave event in the wire format.
    pub fn message(&self, payload: &[u8]) {
        match wire::decode(payload) {
            Ok(wire::Message::Publication(p)) => self.publication(&Arc::new(p)),
            Ok(wire::Message::Presence(e)) => self.presence(&Arc::new(e)),
            Err(e) => tracing::warn!(error = %e, "undecodable message from the broker dropped"),
        }
    }

    pub fn publication(&self, publication: &Arc<Publication>) {
        self.hub.deliver(publication);
    }

    pub fn presence(&self, event: &Arc<PresenceEvent>) {
        self.hub.deliver_presence(event);
    }

    pub async fn control(&self, payload: Bytes) {
        let _ = self.events.send(BrokerEvent::Control(payload)).await;
    }

    pub async fn reconnected(&self) {
        let _ = self.events.send(BrokerEvent::Reconnected).await;
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

/// Where a broker's task sends its answer to one request.
pub(crate) type Reply<R> = oneshot::Sender<Result<R, BrokerError>>;

/// A request to a broker task to make its subscription to `channel` match
/// the hub.
pub(crate) struct SyncRequest {
    pub channel: String,
    pub done: Reply<()>,
}

/// Queues a request (made around its reply channel) for a broker's task
/// now, so that requests keep the order of the calls, and resolves with the
/// task's answer. A full queue fails the request at once.
pub(crate) fn ask_now<T: Send + 'static, R: Send + 'static>(
    queue: &mpsc::Sender<T>,
    make: impl FnOnce(Reply<R>) -> T,
) -> BoxFuture<'static, Result<R, BrokerError>> {
    let (reply, answer) = oneshot::channel();
    let queued = queue.try_send(make(reply));
    Box::pin(async move {
        match queued {
            Ok(()) => {}
            Err(mpsc::error::TrySendError::Full(_)) => return Err(BrokerError::QueueFull),
            Err(mpsc::error::TrySendError::Closed(_)) => return Err(BrokerError::Stopped),
        }
        answer.await.map_err(|_| BrokerError::Stopped)?
    })
}

/// Like [`ask_now`] for requests whose order does not matter: queued at
/// once when there is room, else the future waits for room instead of
/// failing.
pub(crate) fn ask<T: Send + 'static, R: Send + 'static>(
    queue: &mpsc::Sender<T>,
    make: impl FnOnce(Reply<R>) -> T,
) -> BoxFuture<'static, Result<R, BrokerError>> {
    let (reply, answer) = oneshot::channel();
    let waiting = match queue.try_send(make(reply)) {
        Ok(()) => None,
        Err(mpsc::error::TrySendError::Full(request)) => Some((queue.clone(), request)),
        Err(mpsc::error::TrySendError::Closed(_)) => {
            return Box::pin(async { Err(BrokerError::Stopped) })
        }
    };
    Box::pin(async move {
        if let Some((queue, request)) = waiting {
            queue
                .send(request)
                .await
                .map_err(|_| BrokerError::Stopped)?;
        }
        answer.await.map_err(|_| BrokerError::Stopped)?
    })
}
