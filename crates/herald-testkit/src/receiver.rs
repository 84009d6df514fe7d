//! A webhook receiver on loopback: records every POST (headers and body,
//! with when it came) and answers with the status tests set.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU16, Ordering};
use std::sync::Arc;
use std::time::Instant;

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use parking_lot::Mutex;
use serde_json::Value;

/// One POST the receiver got.
#[derive(Debug, Clone)]
pub struct Received {
    pub at: Instant,
    pub headers: Vec<(String, String)>,
    /// The body exactly as sent.
    pub raw: String,
    pub body: Value,
    /// The status it was answered with.
    pub status: u16,
}

impl Received {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// The event's name: Herald's `event`, or the `name` of the first of a
    /// Pusher body's `events`.
    pub fn event(&self) -> &str {
        let pusher = &self.body["events"][0]["name"];
        self.body["event"]
            .as_str()
            .or(pusher.as_str())
            .unwrap_or("")
    }
}

#[derive(Clone)]
pub struct Receiver {
    pub addr: SocketAddr,
    got: Arc<Mutex<Vec<Received>>>,
    status: Arc<AtomicU16>,
}

#[derive(Clone)]
struct Shared {
    got: Arc<Mutex<Vec<Received>>>,
    status: Arc<AtomicU16>,
}

impl Receiver {
    /// Listens on `addr` (`127.0.0.1:0` for any port), answering 200.
    pub async fn start_at(addr: &str) -> Self {
        Self::start_answering(addr, 200).await
    }

    /// Listens on `addr`, answering `status` from the first request on.
    pub async fn start_answering(addr: &str, status: u16) -> Self {
        let got: Arc<Mutex<Vec<Received>>> = Arc::default();
        let status = Arc::new(AtomicU16::new(status));
        let shared = Shared {
            got: got.clone(),
            status: status.clone(),
        };
        async fn handle(State(s): State<Shared>, headers: HeaderMap, raw: String) -> StatusCode {
            let headers = headers
                .iter()
                .map(|(n, v)| (n.to_string(), v.to_str().unwrap_or("").to_string()))
                .collect();
            let body = serde_json::from_str(&raw).unwrap_or(Value::Null);
            let status =
                StatusCode::from_u16(s.status.load(Ordering::Relaxed)).unwrap_or(StatusCode::OK);
            s.got.lock().push(Received {
                at: Instant::now(),
                headers,
                raw,
                body,
                status: status.as_u16(),
            });
            status
        }
        let app = axum::Router::new()
            .route("/hook", axum::routing::post(handle))
            .with_state(shared);
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .expect("receiver binds");
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await });
        Self { addr, got, status }
    }

    pub async fn start() -> Self {
        Self::start_at("127.0.0.1:0").await
    }

    pub fn url(&self) -> String {
        format!("http://{}/hook", self.addr)
    }

    /// The status given from now on.
    pub fn answer(&self, status: u16) {
        self.status.store(status, Ordering::Relaxed);
    }

    pub fn all(&self) -> Vec<Received> {
        self.got.lock().clone()
    }

    /// What came for `event`.
    pub fn of(&self, event: &str) -> Vec<Received> {
        self.all()
            .into_iter()
            .filter(|r| r.event() == event)
            .collect()
    }
}
