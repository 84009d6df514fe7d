//! Brokers move publications between nodes. A node subscribes to a channel on
//! the broker while it has local subscribers, publishes through it, and the
//! broker hands every publication, from any node, to the local hub. The
//! in-memory broker serves a single node; Redis and NATS brokers plug in here.

mod memory;

use std::sync::Arc;

use futures_util::future::BoxFuture;
use herald_protocol::{PresenceEvent, Publication};
use thiserror::Error;

pub use memory::MemoryBroker;

#[derive(Debug, Error)]
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
    /// Called when the channel gets its first local subscriber.
    fn subscribe(&self, channel: &str) -> BoxFuture<'_, Result<(), BrokerError>>;
    /// Called when the channel's last local subscriber leaves.
    fn unsubscribe(&self, channel: &str) -> BoxFuture<'_, Result<(), BrokerError>>;
}
