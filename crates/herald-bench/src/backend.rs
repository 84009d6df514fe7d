//! `herald-bench backend`: an application backend for Herald's proxies and
//! webhooks, as cheap as it can be, so that runs measure Herald. It
//! answers the connect proxy (`POST /connect`: a new user each time) and
//! receives webhooks (`POST /hook`: counted), and reports both at
//! `GET /stats`: how many, and the rate between the first and the last
//! webhook event (`POST /reset` starts counting again).

use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::State;
use axum::routing::{get, post};
use axum::{Json, Router};
use parking_lot::Mutex;
use serde_json::{json, Value};

use crate::bare::until_stopped;
use crate::target::check_loopback;

#[derive(Debug, Clone, clap::Args)]
pub struct Options {
    /// Address to listen on (loopback only).
    #[arg(long, default_value = "127.0.0.1")]
    pub address: IpAddr,
    /// Port to listen on (0 picks a free one; the bound address is printed).
    #[arg(long, default_value_t = 18400)]
    pub port: u16,
    /// Stop by itself after this long (e.g. `30m`).
    #[arg(long, default_value = "30m", value_parser = humantime::parse_duration)]
    pub max_runtime: Duration,
}

#[derive(Default)]
struct Counts {
    connects: AtomicU64,
    events: AtomicU64,
    /// When the first and the latest webhook event came.
    window: Mutex<Option<(Instant, Instant)>>,
}

async fn connect(State(c): State<Arc<Counts>>) -> Json<Value> {
    let n = c.connects.fetch_add(1, Ordering::Relaxed);
    Json(json!({"result": {"user": format!("u{n}")}}))
}

async fn hook(State(c): State<Arc<Counts>>) -> &'static str {
    c.events.fetch_add(1, Ordering::Relaxed);
    let now = Instant::now();
    let mut w = c.window.lock();
    *w = Some(w.map_or((now, now), |(first, _)| (first, now)));
    ""
}

async fn stats(State(c): State<Arc<Counts>>) -> Json<Value> {
    let events = c.events.load(Ordering::Relaxed);
    let span = c
        .window
        .lock()
        .map_or(0.0, |(first, last)| (last - first).as_secs_f64());
    let rate = if span > 0.0 {
        events as f64 / span
    } else {
        0.0
    };
    Json(json!({
        "connects": c.connects.load(Ordering::Relaxed),
        "events": events,
        "events_span_s": span,
        "events_per_s": rate,
    }))
}

async fn reset(State(c): State<Arc<Counts>>) -> &'static str {
    c.connects.store(0, Ordering::Relaxed);
    c.events.store(0, Ordering::Relaxed);
    *c.window.lock() = None;
    ""
}

/// Serves until Ctrl-C, SIGTERM or `max_runtime`.
pub async fn serve(o: Options) -> anyhow::Result<()> {
    check_loopback(&o.address.to_string())?;
    let listener = tokio::net::TcpListener::bind(SocketAddr::new(o.address, o.port)).await?;
    let addr = listener.local_addr()?;
    println!("backend listening on {addr} (POST /connect, POST /hook, GET /stats, POST /reset)");
    let app = Router::new()
        .route("/connect", post(connect))
        .route("/hook", post(hook))
        .route("/stats", get(stats))
        .route("/reset", post(reset))
        .with_state(Arc::new(Counts::default()));
    axum::serve(listener, app)
        .with_graceful_shutdown(until_stopped("backend", o.max_runtime))
        .await?;
    Ok(())
}
