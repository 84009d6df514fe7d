//! The single-node broker: publishing is delivering to the local hub.

use std::sync::Arc;

use bytes::Bytes;
use futures_util::future::{self, BoxFuture};
use herald_protocol::{PresenceEvent, Publication};

use super::{Broker, BrokerError, Inbound};

pub struct MemoryBroker {
    inbound: Inbound,
}

impl MemoryBroker {
    pub fn new(inbound: Inbound) -> Self {
        Self { inbound }
    }
}

fn done() -> BoxFuture<'static, Result<(), BrokerError>> {
    Box::pin(future::ready(Ok(())))
}

impl Broker for MemoryBroker {
    fn publish(
        &self,
        publication: Arc<Publication>,
    ) -> BoxFuture<'static, Result<(), BrokerError>> {
        self.inbound.publication(&publication);
        done()
    }

    fn publish_presence(
        &self,
        event: Arc<PresenceEvent>,
    ) -> BoxFuture<'static, Result<(), BrokerError>> {
        self.inbound.presence(&event);
        done()
    }

    fn check(&self) -> BoxFuture<'static, Result<(), BrokerError>> {
        done()
    }

    /// A single node has no one to tell.
    fn publish_control(&self, _message: Bytes) -> BoxFuture<'static, Result<(), BrokerError>> {
        done()
    }

    fn sync_channel(&self, _channel: &str) -> BoxFuture<'static, Result<(), BrokerError>> {
        done()
    }
}
