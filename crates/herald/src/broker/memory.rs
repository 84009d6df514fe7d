//! The single-node broker: publishing is delivering to the local hub.

use std::sync::Arc;

use futures_util::future::{self, BoxFuture};
use herald_protocol::{PresenceEvent, Publication};

use super::{Broker, BrokerError};
use crate::hub::Hub;

pub struct MemoryBroker {
    hub: Arc<Hub>,
}

impl MemoryBroker {
    pub fn new(hub: Arc<Hub>) -> Self {
        Self { hub }
    }
}

impl Broker for MemoryBroker {
    fn publish(
        &self,
        publication: Arc<Publication>,
    ) -> BoxFuture<'static, Result<(), BrokerError>> {
        self.hub.deliver(&publication);
        Box::pin(future::ready(Ok(())))
    }

    fn publish_presence(
        &self,
        event: Arc<PresenceEvent>,
    ) -> BoxFuture<'static, Result<(), BrokerError>> {
        self.hub.deliver_presence(&event);
        Box::pin(future::ready(Ok(())))
    }

    fn subscribe(&self, _channel: &str) -> BoxFuture<'_, Result<(), BrokerError>> {
        Box::pin(future::ready(Ok(())))
    }

    fn unsubscribe(&self, _channel: &str) -> BoxFuture<'_, Result<(), BrokerError>> {
        Box::pin(future::ready(Ok(())))
    }
}
