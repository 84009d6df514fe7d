//! The NATS broker: publications travel over core NATS subjects, one per
//! Herald channel, `<prefix>.client.<token>` where the token is the channel
//! name in unpadded URL-safe base64. Channel names may hold `.`, `*`, `>` or
//! spaces; encoded, none of them can split the subject into more tokens or
//! turn it into a wildcard. Control messages use `<prefix>.control`.
//!
//! NATS carries no history, so history comes from the durable store (the
//! configuration refuses memory-history namespaces with this broker).

use std::collections::{HashMap, HashSet};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use async_nats::connection::State;
use base64::Engine as _;
use bytes::Bytes;
use futures_util::future::BoxFuture;
use futures_util::StreamExt;
use herald_protocol::{PresenceEvent, Publication};
use tokio::sync::{mpsc, Notify};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::{ask, ask_now, Broker, BrokerError, Inbound, Reply, SyncRequest};
use crate::config::{redacted_url, NatsConfig};
use crate::wire;

/// Publications and control messages queued for NATS at most; past it a
/// publish fails at once rather than memory growing while NATS is slow.
const PUBLISH_QUEUE: usize = 65_536;

/// Subscription requests queued at most; a subscriber waits for room.
const SYNC_QUEUE: usize = 1024;

struct Outgoing {
    subject: String,
    payload: Bytes,
    done: Reply<()>,
}

pub struct NatsBroker {
    client: async_nats::Client,
    /// `broker.nats.io_timeout`.
    io: Duration,
    prefix: String,
    outgoing: mpsc::Sender<Outgoing>,
    sync: mpsc::Sender<SyncRequest>,
    stop: CancellationToken,
}

/// The subject of a channel: its name can never widen or break it.
pub fn subject(prefix: &str, channel: &str) -> String {
    format!(
        "{prefix}.client.{}",
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(channel)
    )
}

impl NatsBroker {
    pub async fn connect(
        cfg: &NatsConfig,
        inbound: Inbound,
        stop: CancellationToken,
    ) -> Result<Self, BrokerError> {
        // Wakes the reconnection watcher early (it also polls).
        let connected = Arc::new(Notify::new());
        let signal = connected.clone();
        let client = async_nats::ConnectOptions::new()
            .name("herald")
            .connection_timeout(Duration::from_secs(2))
            .max_reconnects(None)
            .reconnect_delay_callback(|attempts| {
                Duration::from_millis((50u64 << attempts.min(6)).min(2000))
            })
            .event_callback(move |event| {
                let signal = signal.clone();
                async move {
                    match event {
                        async_nats::Event::Connected => signal.notify_one(),
                        async_nats::Event::Disconnected => {
                            tracing::warn!("nats connection lost; reconnecting")
                        }
                        other => tracing::debug!(event = %other, "nats event"),
                    }
                }
            })
            .connect(cfg.url.as_str())
            .await
            .map_err(|source| BrokerError::NatsConnect {
                url: redacted_url(&cfg.url),
                source,
            })?;

        let io = cfg.io_timeout.0;
        let control = client
            .subscribe(format!("{}.control", cfg.prefix))
            .await
            .map_err(|e| BrokerError::Nats(e.into()))?;
        tokio::spawn(forward_control(control, inbound.clone(), stop.clone()));

        tokio::spawn(watch_reconnections(
            client.clone(),
            connected,
            inbound.clone(),
            io,
            stop.clone(),
        ));
        let (outgoing, queue) = mpsc::channel(PUBLISH_QUEUE);
        tokio::spawn(publisher(client.clone(), queue, stop.clone()));
        let (sync, requests) = mpsc::channel(SYNC_QUEUE);
        tokio::spawn(subscriber(
            client.clone(),
            cfg.prefix.clone(),
            inbound,
            requests,
            io,
            stop.clone(),
        ));
        Ok(Self {
            client,
            io,
            prefix: cfg.prefix.clone(),
            outgoing,
            sync,
            stop,
        })
    }

    /// The connection, for what else the engine keeps in NATS.
    pub fn client(&self) -> async_nats::Client {
        self.client.clone()
    }

    fn send(&self, subject: String, payload: Bytes) -> BoxFuture<'static, Result<(), BrokerError>> {
        ask_now(&self.outgoing, |done| Outgoing {
            subject,
            payload,
            done,
        })
    }
}

impl Drop for NatsBroker {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

impl Broker for NatsBroker {
    /// A publish only queues the message in the client: its last ones
    /// (the leaves of a stopping node) must be flushed to the server.
    fn flush(&self) -> BoxFuture<'static, ()> {
        let (client, io) = (self.client.clone(), self.io);
        Box::pin(async move {
            let _ = tokio::time::timeout(io, client.flush()).await;
        })
    }

    /// The client's view of its connection (it reconnects by itself).
    fn check(&self) -> BoxFuture<'static, Result<(), BrokerError>> {
        let state = self.client.connection_state();
        Box::pin(async move {
            match state {
                async_nats::connection::State::Connected => Ok(()),
                _ => Err(BrokerError::NatsDown),
            }
        })
    }

    fn publish(&self, p: Arc<Publication>) -> BoxFuture<'static, Result<(), BrokerError>> {
        self.send(
            subject(&self.prefix, &p.channel),
            wire::encode_publication_message(&p),
        )
    }

    fn publish_presence(
        &self,
        e: Arc<PresenceEvent>,
    ) -> BoxFuture<'static, Result<(), BrokerError>> {
        self.send(
            subject(&self.prefix, &e.channel),
            wire::encode_presence_message(&e),
        )
    }

    fn publish_control(&self, message: Bytes) -> BoxFuture<'static, Result<(), BrokerError>> {
        self.send(format!("{}.control", self.prefix), message)
    }

    fn sync_channel(&self, channel: &str) -> BoxFuture<'static, Result<(), BrokerError>> {
        let channel = channel.to_string();
        ask(&self.sync, |done| SyncRequest { channel, done })
    }
}

/// Publishes in queue order; while NATS is unreachable every publish fails
/// at once instead of piling up in the client's buffer.
async fn publisher(
    client: async_nats::Client,
    mut queue: mpsc::Receiver<Outgoing>,
    stop: CancellationToken,
) {
    loop {
        let item = tokio::select! {
            _ = stop.cancelled() => return,
            item = queue.recv() => match item { Some(i) => i, None => return },
        };
        let result = if client.connection_state() != State::Connected {
            Err(BrokerError::NatsDown)
        } else {
            client
                .publish(item.subject, item.payload)
                .await
                .map_err(|e| BrokerError::Nats(e.into()))
        };
        let _ = item.done.send(result);
    }
}

/// Reports a reconnection, once per new connection, when the server has
/// this client's subscriptions again (a flush after the client re-sent
/// them). Connections are counted by the client itself as they are made
/// (its events arrive later, through a queue, and may be dropped), so
/// every reconnection is reported once, however short the outage.
async fn watch_reconnections(
    client: async_nats::Client,
    connected: Arc<Notify>,
    inbound: Inbound,
    io: Duration,
    stop: CancellationToken,
) {
    let stats = client.statistics();
    let mut reported = stats.connects.load(Ordering::Acquire);
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = connected.notified() => {}
            _ = tokio::time::sleep(Duration::from_millis(250)) => {}
        }
        if client.connection_state() != State::Connected {
            continue;
        }
        let connects = stats.connects.load(Ordering::Acquire);
        if connects == reported {
            continue;
        }
        if matches!(tokio::time::timeout(io, client.flush()).await, Ok(Ok(()))) {
            reported = connects;
            tracing::info!("nats reconnected");
            inbound.reconnected().await;
        }
    }
}

/// Owns the per-channel subscriptions and keeps them matching the hub;
/// channels whose subscription failed are tried again every second.
async fn subscriber(
    client: async_nats::Client,
    prefix: String,
    inbound: Inbound,
    mut requests: mpsc::Receiver<SyncRequest>,
    io: Duration,
    stop: CancellationToken,
) {
    let mut subs: HashMap<String, JoinHandle<()>> = HashMap::new();
    let mut failed: HashSet<String> = HashSet::new();
    let mut retry = tokio::time::interval(Duration::from_secs(1));
    loop {
        let (channels, done) = tokio::select! {
            _ = stop.cancelled() => break,
            r = requests.recv() => match r {
                Some(r) => (vec![r.channel], Some(r.done)),
                None => break,
            },
            _ = retry.tick(), if !failed.is_empty() => (failed.drain().collect(), None),
        };
        let mut result = Ok(());
        for channel in channels {
            let outcome = sync(&client, &prefix, &inbound, &mut subs, &channel, io, &stop).await;
            if let Err(e) = outcome {
                tracing::warn!(
                    channel,
                    error = %crate::report::Chain(&e),
                    "nats subscription failed; retrying"
                );
                failed.insert(channel);
                result = Err(e);
            }
        }
        if let Some(done) = done {
            let _ = done.send(result);
        }
    }
    for (_, task) in subs {
        task.abort();
    }
}

/// Subscribes or unsubscribes `channel` to match the hub.
async fn sync(
    client: &async_nats::Client,
    prefix: &str,
    inbound: &Inbound,
    subs: &mut HashMap<String, JoinHandle<()>>,
    channel: &str,
    io: Duration,
    stop: &CancellationToken,
) -> Result<(), BrokerError> {
    let want = inbound.has_subscribers(channel);
    if !want {
        // Dropping the subscriber unsubscribes it.
        if let Some(task) = subs.remove(channel) {
            task.abort();
        }
        return Ok(());
    }
    if subs.contains_key(channel) {
        return Ok(());
    }
    let subscribed = async {
        let s = client.subscribe(subject(prefix, channel)).await?;
        // The server has the subscription once a flush returns.
        client.flush().await?;
        Ok::<_, Box<dyn std::error::Error + Send + Sync>>(s)
    };
    let s = match tokio::time::timeout(io, subscribed).await {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => return Err(BrokerError::Nats(e)),
        Err(_) => return Err(BrokerError::Timeout(io)),
    };
    let task = tokio::spawn(forward(s, inbound.clone(), stop.clone()));
    subs.insert(channel.to_string(), task);
    Ok(())
}

/// Hands a channel subscription's messages to the hub until `stop`.
async fn forward(mut sub: async_nats::Subscriber, inbound: Inbound, stop: CancellationToken) {
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            m = sub.next() => match m {
                Some(m) => inbound.message(&m.payload),
                None => return,
            },
        }
    }
}

/// Hands control messages to the node until `stop`.
async fn forward_control(
    mut sub: async_nats::Subscriber,
    inbound: Inbound,
    stop: CancellationToken,
) {
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            m = sub.next() => match m {
                Some(m) => inbound.control(m.payload).await,
                None => return,
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::subject;

    #[test]
    fn channel_names_cannot_widen_subjects() {
        for channel in ["a.b", "*", ">", "a b", "news:>", "x.*.y"] {
            let s = subject("herald", channel);
            let token = s.strip_prefix("herald.client.").unwrap();
            assert!(
                token
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'),
                "{channel:?} gave {s:?}"
            );
        }
        assert_ne!(subject("p", "a.b"), subject("p", "a_b"));
    }
}
