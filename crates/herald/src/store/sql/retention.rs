//! The retention task of a durable store: every `storage.retention_interval`
//! it deletes publications beyond their stream's size or older than its
//! TTL, and idempotency keys whose window has ended.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::db::Db;
use super::{created_cutoff, sql, to_i64};
use crate::store::{StoreError, StreamOptions};

/// Periodically deletes publications beyond their stream's size or TTL.
pub(super) struct Retention {
    pub(super) db: Arc<dyn Db>,
    pub(super) opts_for: Arc<dyn Fn(&str) -> StreamOptions + Send + Sync>,
    pub(super) every: Duration,
    pub(super) key_window: Duration,
    pub(super) removed: Arc<AtomicU64>,
}

impl Retention {
    pub(super) async fn run(self, shutdown: CancellationToken) {
        let mut tick = tokio::time::interval(self.every.max(Duration::from_millis(1)));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tick.tick().await; // The first tick is immediate; start one period in.
        loop {
            tokio::select! {
                () = shutdown.cancelled() => return,
                _ = tick.tick() => {}
            }
            tokio::select! {
                () = shutdown.cancelled() => return,
                result = self.pass() => if let Err(e) = result {
                    tracing::warn!(error = %crate::report::Chain(&e), "stream retention pass failed");
                },
            }
        }
    }

    async fn pass(&self) -> Result<(), StoreError> {
        let window = to_i64(self.key_window.as_millis().try_into().unwrap_or(u64::MAX));
        let ended = super::now_ms().saturating_sub(window);
        self.db
            .forget_keys(ended)
            .await
            .map_err(|e| sql("retention", e))?;
        let streams = self.db.streams().await.map_err(|e| sql("retention", e))?;
        for (channel, top) in streams {
            let opts = (self.opts_for)(&channel);
            let upto = if opts.size > 0 {
                top.saturating_sub(to_i64(opts.size as u64))
            } else {
                0
            };
            let cutoff = created_cutoff(&opts);
            if upto <= 0 && cutoff == i64::MIN {
                continue;
            }
            let n = self
                .db
                .trim(&channel, upto, cutoff)
                .await
                .map_err(|e| sql("retention", e))?;
            self.removed.fetch_add(n, Ordering::Relaxed);
        }
        Ok(())
    }
}
