//! Claims kept in NATS's key-value store (JetStream), so that every node of
//! a NATS-brokered cluster sees them. The bucket keeps each entry for the
//! window. Core NATS without JetStream has no such store: then (and while
//! JetStream cannot be reached) keys hold on this node only, which is
//! logged, and the bucket is tried again a while later.

use std::time::{Duration, Instant};

use async_nats::jetstream::kv::{self, CreateErrorKind};
use async_nats::jetstream::stream;
use base64::Engine as _;
use bytes::Bytes;
use futures_util::future::BoxFuture;
use parking_lot::Mutex;
use tokio::sync::OnceCell;

use super::{Claim, Claims, LocalClaims};
use crate::broker::BrokerError;

/// How long after failing to open the bucket it is tried again.
const RETRY_OPEN: Duration = Duration::from_secs(30);

pub struct NatsClaims {
    jetstream: async_nats::jetstream::Context,
    bucket: String,
    store: OnceCell<kv::Store>,
    /// When opening the bucket last failed.
    failed_at: Mutex<Option<Instant>>,
    /// Where keys are kept while there is no bucket.
    local: LocalClaims,
}

impl NatsClaims {
    /// Claims in the bucket `<prefix>_once`, opened (and made when needed)
    /// on first use.
    pub fn new(client: async_nats::Client, prefix: &str) -> Self {
        Self {
            jetstream: async_nats::jetstream::new(client),
            bucket: format!("{prefix}_once"),
            store: OnceCell::new(),
            failed_at: Mutex::new(None),
            local: LocalClaims::default(),
        }
    }

    /// Makes (or updates to `window`) the bucket's stream as a key-value
    /// bucket has it, and opens the bucket. The stream is made here rather
    /// than by the client library's bucket call, which needs an account
    /// reply that NATS servers before 2.11 do not give.
    async fn open(&self, window: Duration) -> Result<kv::Store, BrokerError> {
        let config = stream::Config {
            name: format!("KV_{}", self.bucket),
            description: Some("Herald: idempotency keys of publications".into()),
            subjects: vec![format!("$KV.{}.>", self.bucket)],
            max_messages_per_subject: 1,
            max_age: window,
            allow_rollup: true,
            deny_delete: true,
            allow_direct: true,
            discard: stream::DiscardPolicy::New,
            ..Default::default()
        };
        self.jetstream
            .create_or_update_stream(config)
            .await
            .map_err(failed)?;
        self.jetstream
            .get_key_value(&self.bucket)
            .await
            .map_err(failed)
    }

    /// The bucket, its entries living for `window`; `None` while it cannot
    /// be opened.
    async fn bucket(&self, window: Duration) -> Option<&kv::Store> {
        if let Some(store) = self.store.get() {
            return Some(store);
        }
        if self
            .failed_at
            .lock()
            .is_some_and(|at| at.elapsed() < RETRY_OPEN)
        {
            return None;
        }
        let opened = self.store.get_or_try_init(|| self.open(window)).await;
        match opened {
            Ok(store) => Some(store),
            Err(e) => {
                tracing::warn!(
                    bucket = %self.bucket,
                    error = %crate::report::Chain(&e),
                    "no NATS key-value store (is JetStream enabled?): idempotency keys \
                     hold on this node only for now"
                );
                *self.failed_at.lock() = Some(Instant::now());
                None
            }
        }
    }
}

/// A key-value key: both parts in URL-safe base64, which keeps to the
/// characters keys allow.
fn key(channel: &str, key: &str) -> String {
    let b64 = &base64::engine::general_purpose::URL_SAFE_NO_PAD;
    format!("{}.{}", b64.encode(channel), b64.encode(key))
}

fn failed(e: impl std::error::Error + Send + Sync + 'static) -> BrokerError {
    BrokerError::Nats(Box::new(e))
}

impl Claims for NatsClaims {
    fn claim<'a>(
        &'a self,
        channel: &'a str,
        k: &'a str,
        window: Duration,
    ) -> BoxFuture<'a, Result<Claim, BrokerError>> {
        Box::pin(async move {
            let Some(store) = self.bucket(window).await else {
                return self.local.claim(channel, k, window).await;
            };
            let id = key(channel, k);
            match store.create(&id, Bytes::from_static(b"pending")).await {
                Ok(_) => return Ok(Claim::Mine),
                Err(e) if e.kind() == CreateErrorKind::AlreadyExists => {}
                Err(e) => return Err(failed(e)),
            }
            match store.get(id).await.map_err(failed)?.as_deref() {
                Some(b"done") => Ok(Claim::Done),
                // Pending, or deleted in between: look again.
                _ => Ok(Claim::Pending),
            }
        })
    }

    fn done<'a>(
        &'a self,
        channel: &'a str,
        k: &'a str,
        window: Duration,
    ) -> BoxFuture<'a, Result<(), BrokerError>> {
        Box::pin(async move {
            let Some(store) = self.bucket(window).await else {
                return self.local.done(channel, k, window).await;
            };
            store
                .put(key(channel, k), Bytes::from_static(b"done"))
                .await
                .map_err(failed)?;
            Ok(())
        })
    }

    fn release<'a>(&'a self, channel: &'a str, k: &'a str) -> BoxFuture<'a, ()> {
        Box::pin(async move {
            match self.store.get() {
                // A claim left behind expires with the bucket's max age.
                Some(store) => drop(store.delete(key(channel, k)).await),
                None => self.local.release(channel, k).await,
            }
        })
    }
}
