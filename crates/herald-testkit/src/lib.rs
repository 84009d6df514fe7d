//! Fixtures for Herald's tests and the load generator's: a real server on
//! 127.0.0.1:0 in-process ([`TestServer`]) or as a process ([`Served`]), a
//! raw protocol client over a real WebSocket ([`Ws`]), private Redis and
//! NATS servers to stop and restart ([`OwnServer`]), a PostgreSQL database
//! per test ([`TestDatabase`]), and bounded waits. Every wait ends within
//! [`WAIT`]; nothing sleeps for a fixed time where an event can be awaited.

mod cluster;
mod process;
mod pusher;
mod pushes;
mod raw;
mod receiver;
mod server;
mod services;
mod ws;

use std::future::Future;
use std::time::Duration;

use serde_json::Value;

pub use cluster::ClusterNode;
pub use process::{free_port, OwnServer, Served};
pub use pusher::{pusher_auth, pusher_message, pusher_signed, pusher_signed_with};
pub use pushes::Pushes;
pub use raw::{frame, opcode, RawEvent, RawWs};
pub use receiver::{Received, Receiver};
pub use server::{base_config, config_refusal, merge, overflow, TestServer};
pub use services::{env_url, required, TestDatabase};
pub use ws::{code, Event, Ws};

pub const SECRET: &str = "integration-secret";
pub const API_KEY: &str = "integration-api-key";
/// Longest any single wait may take before the test fails.
pub const WAIT: Duration = Duration::from_secs(10);

/// Signs an HS256 token with the test secret.
pub fn token(claims: Value) -> String {
    herald::auth::sign_hs256(&claims, SECRET).expect("claims sign")
}

pub fn now() -> i64 {
    herald::auth::now_unix()
}

/// `prefix` and 12 random hex digits: names (Redis prefixes, databases)
/// that no other test uses.
pub fn unique(prefix: &str) -> String {
    format!(
        "{prefix}{}",
        &uuid::Uuid::new_v4().simple().to_string()[..12]
    )
}

/// A counter or gauge from `/metrics` of the server at `addr`.
pub async fn metric(addr: &str, name: &str) -> u64 {
    let text = reqwest::get(format!("http://{addr}/metrics"))
        .await
        .expect("metrics reachable")
        .text()
        .await
        .expect("metrics body");
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.trim().parse::<f64>().ok())
        .map(|v| v as u64)
        .unwrap_or_else(|| panic!("no {name} in {text}"))
}

/// `call`'s output, failing the test unless it came within `limit`: for
/// calls that must answer in bounded time (an error rather than a hang),
/// never to measure speed.
pub async fn answers_within<T>(limit: Duration, what: &str, call: impl Future<Output = T>) -> T {
    let started = std::time::Instant::now();
    let out = call.await;
    let waited = started.elapsed();
    assert!(waited < limit, "{what} waited {waited:?}, over {limit:?}");
    out
}

/// Waits until `check` passes, polling; fails after [`WAIT`].
pub async fn eventually<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + WAIT;
    while !check().await {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// [`eventually`] for a condition that needs no waiting to check.
pub async fn wait_until(what: &str, mut cond: impl FnMut() -> bool) {
    eventually(what, || std::future::ready(cond())).await;
}
