//! Sending recorded events: claim what is due, POST each to its webhook
//! (at most [`CONCURRENCY`] at once), record the outcome. Any 2xx is
//! delivered; anything else is tried again after a delay that doubles each
//! time (±25% jitter), until the webhook's `max_attempts`, then kept as a
//! dead letter. Herald's webhooks and Pusher apps' are signed each their
//! own way ([`Style`]).

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::stream::FuturesUnordered;
use futures_util::{FutureExt, StreamExt};
use http_body_util::{Full, Limited};
use hyper::header::{HeaderValue, CONTENT_TYPE};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use super::{Style, Target};
use crate::client_tls::{http_client, HttpClient};
use crate::clock::now_ms;
use crate::metrics::Counters;
use crate::store::event_queue::{Claimed, EventQueue, Settled};

/// Deliveries in flight at once, over every webhook.
const CONCURRENCY: usize = 64;
/// How often storage is asked for due events when nothing new was
/// recorded (retries come due by themselves).
const POLL: Duration = Duration::from_millis(500);
/// The most of a receiver's answer that is read.
const ANSWER_LIMIT: usize = 64 * 1024;

pub(super) struct Delivery {
    targets: Arc<Vec<Target>>,
    /// The node's uid, which its claims carry.
    uid: String,
    store: Arc<dyn EventQueue>,
    counters: Arc<Counters>,
    client: HttpClient,
    /// How long a claim keeps other nodes away: longer than an attempt
    /// (each event is settled as soon as its attempt ends).
    lease: Duration,
    poll: Duration,
}

impl Delivery {
    pub(super) fn new(
        targets: Arc<Vec<Target>>,
        store: Arc<dyn EventQueue>,
        uid: &str,
        counters: Arc<Counters>,
    ) -> Result<Self, String> {
        let client = http_client()?;
        let longest = targets
            .iter()
            .map(|t| t.hook.timeout.0)
            .max()
            .unwrap_or_default();
        let quickest = targets
            .iter()
            .map(|t| t.hook.retry_initial_delay.0)
            .min()
            .unwrap_or(POLL);
        Ok(Self {
            targets,
            uid: uid.to_string(),
            store,
            counters,
            client,
            lease: longest * 2 + Duration::from_secs(10),
            poll: POLL.min(quickest / 2),
        })
    }

    /// Keeps up to [`CONCURRENCY`] attempts in flight, claiming more as
    /// slots free up and settling each as it ends (with whatever else ended
    /// meanwhile), until `stop`; attempts in flight then finish first.
    pub(super) async fn run(self, recorded: Arc<Notify>, stop: CancellationToken) {
        let mut inflight = FuturesUnordered::new();
        // Storage had nothing more due when last asked.
        let mut drained = false;
        loop {
            let free = CONCURRENCY - inflight.len();
            if !stop.is_cancelled() && !drained && free > 0 {
                let now = now_ms();
                let until = now + self.lease.as_millis() as i64;
                match self.store.claim(&self.uid, now, until, free as i64).await {
                    Ok(claimed) => {
                        drained = claimed.len() < free;
                        inflight.extend(claimed.into_iter().map(|c| self.attempt(c)));
                    }
                    Err(e) => {
                        tracing::warn!(error = %crate::report::Chain(&e), "webhook events not claimed");
                        drained = true;
                    }
                }
            }
            if inflight.is_empty() {
                if stop.is_cancelled() {
                    return;
                }
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = recorded.notified() => {}
                    _ = tokio::time::sleep(self.poll) => {}
                }
                drained = false;
                continue;
            }
            tokio::select! {
                ended = inflight.next() => {
                    let mut outcomes: Vec<Settled> = ended.into_iter().collect();
                    while let Some(Some(more)) = inflight.next().now_or_never() {
                        outcomes.push(more);
                    }
                    self.settle(&outcomes).await;
                }
                _ = recorded.notified(), if drained => drained = false,
                _ = tokio::time::sleep(self.poll), if drained => drained = false,
            }
        }
    }

    /// Records outcomes, trying a few times: an outcome not recorded is
    /// sent again once its claim lapses (at least once, never lost).
    async fn settle(&self, outcomes: &[Settled]) {
        for attempt in 0..3 {
            match self.store.settle(&self.uid, outcomes).await {
                Ok(()) => {
                    for o in outcomes {
                        let c = match o {
                            Settled::Delivered { .. } => &self.counters.webhook_delivered,
                            Settled::Retry { .. } => &self.counters.webhook_failed_attempts,
                            Settled::Dead { .. } => &self.counters.webhook_dead_letters,
                        };
                        Counters::incr(c);
                    }
                    return;
                }
                Err(e) => {
                    tracing::warn!(error = %crate::report::Chain(&e), attempt, "webhook outcomes not recorded");
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            }
        }
    }

    /// One attempt at one event.
    async fn attempt(&self, event: Claimed) -> Settled {
        let Some(target) = self.targets.iter().find(|t| t.hook.name == event.hook) else {
            return Settled::Dead {
                id: event.id,
                error: "no webhook of this name is configured".into(),
            };
        };
        let hook = &target.hook;
        let error = match self.post(target, &event).await {
            Ok(status) if (200..300).contains(&status) => {
                return Settled::Delivered { id: event.id };
            }
            Ok(status) => format!("HTTP status {status}"),
            Err(e) => e,
        };
        let attempts = event.attempts + 1;
        tracing::debug!(webhook = %hook.name, id = %event.id, attempts, error, "webhook attempt failed");
        if attempts >= i64::from(hook.max_attempts) {
            tracing::warn!(webhook = %hook.name, id = %event.id, attempts, error, "webhook event kept as a dead letter");
            return Settled::Dead {
                id: event.id,
                error,
            };
        }
        let delay = backoff(hook.retry_initial_delay.0, attempts, jitter());
        Settled::Retry {
            id: event.id,
            next_at: now_ms() + delay.as_millis() as i64,
            error,
        }
    }

    /// POSTs the event's body; the receiver's status.
    async fn post(&self, target: &Target, event: &Claimed) -> Result<u16, String> {
        let (client, hook) = (&self.client, &target.hook);
        let mut request = hyper::Request::post(hook.url.as_str())
            .header(CONTENT_TYPE, HeaderValue::from_static("application/json"))
            .header("x-herald-delivery", event.id.as_str());
        let signature = sign(hook.secret.expose(), &event.body);
        match &target.style {
            Style::Herald => {
                request = request.header("x-herald-event", event.event.as_str());
                // Signed when the webhook has a secret.
                if !hook.secret.is_empty() {
                    let signature = format!("sha256={signature}");
                    request = request.header("x-herald-signature", signature);
                }
            }
            Style::Pusher { key, .. } => {
                request = request
                    .header("x-pusher-key", key.as_str())
                    .header("x-pusher-signature", signature);
            }
        }
        let request = request
            .body(Full::new(Bytes::from(event.body.clone())))
            .map_err(|e| format!("request: {e}"))?;
        let sent = tokio::time::timeout(hook.timeout.0, async {
            let response = client.request(request).await?;
            let status = response.status().as_u16();
            // Read (and drop) a short answer so the connection can be
            // reused; a long one is cut off.
            let body = Limited::new(response.into_body(), ANSWER_LIMIT);
            let _ = http_body_util::BodyExt::collect(body).await;
            Ok::<u16, hyper_util::client::legacy::Error>(status)
        })
        .await;
        match sent {
            Ok(Ok(status)) => Ok(status),
            Ok(Err(e)) => Err(crate::report::Chain(&e).to_string()),
            Err(_) => Err(format!("no answer within {:?}", hook.timeout.0)),
        }
    }
}

/// Hex HMAC-SHA256 of `body` with `secret`.
pub fn sign(secret: &str, body: &str) -> String {
    crate::signing::hmac_sha256_hex(secret.as_bytes(), body.as_bytes())
}

/// The delay before attempt `attempts + 1`: `initial` doubled for each
/// attempt after the first, times `jitter` (0.75 to 1.25). Each delay is
/// longer than the one before whatever the jitter (doubling beats ±25%).
pub fn backoff(initial: Duration, attempts: i64, jitter: f64) -> Duration {
    // `max_attempts` is at most MAX_ATTEMPTS, so the clamp never binds.
    let doublings = (attempts - 1).clamp(0, 62) as u32;
    initial.saturating_mul(1 << doublings).mul_f64(jitter)
}

/// A factor between 0.75 and 1.25.
fn jitter() -> f64 {
    let r = (uuid::Uuid::new_v4().as_u128() % 10_001) as f64 / 10_000.0;
    0.75 + r * 0.5
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_delay_is_longer_than_the_last_and_within_a_quarter() {
        let initial = Duration::from_secs(1);
        let mut before = Duration::ZERO;
        for attempts in 1..i64::from(crate::config::webhook::MAX_ATTEMPTS) {
            let plain = backoff(initial, attempts, 1.0);
            let low = backoff(initial, attempts, 0.75);
            let high = backoff(initial, attempts, 1.25);
            assert!(low > before, "attempt {attempts}: {low:?} after {before:?}");
            assert_eq!(plain, initial * (1 << (attempts - 1)));
            before = high;
        }
        for _ in 0..1000 {
            let j = jitter();
            assert!((0.75..=1.25).contains(&j), "{j}");
        }
    }

    #[test]
    fn signatures_are_hex_hmac_sha256() {
        // RFC 4231 test case 2.
        assert_eq!(
            sign("Jefe", "what do ya want for nothing?"),
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }
}
