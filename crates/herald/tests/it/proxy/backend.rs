//! The application's backend the proxy tests call: one script answering
//! over HTTP (`POST /<call>`) and as Centrifugo's gRPC proxy service,
//! recording every call (body and headers) and every TCP connection it
//! accepted.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Path, State};
use axum::http::HeaderMap;
use axum::serve::ListenerExt;
use futures_util::StreamExt;
use parking_lot::Mutex;
use serde_json::{json, Value};

use herald::proxy::pb;
use herald::proxy::pb::centrifugo_proxy_server::{CentrifugoProxy, CentrifugoProxyServer};

/// How the backend answers a call: `(HTTP status, JSON body)` from the
/// call's name (`connect`, `subscribe`, …) and its request. The body
/// `"sleep"` answers nothing for longer than any proxy timeout; `"garbage"`
/// (HTTP only) answers what is not JSON.
pub type Script = fn(&str, &Value) -> (u16, Value);

/// How long a `"sleep"` answer takes: far beyond the tests' proxy timeouts.
const SLEEP: Duration = Duration::from_secs(5);

/// One call the backend received.
#[derive(Debug, Clone)]
pub struct Seen {
    pub call: String,
    pub body: Value,
    pub headers: Vec<(String, String)>,
}

impl Seen {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

#[derive(Clone)]
pub struct Backend {
    script: Script,
    seen: Arc<Mutex<Vec<Seen>>>,
    /// TCP connections accepted, over both protocols.
    accepted: Arc<AtomicUsize>,
}

impl Backend {
    pub fn new(script: Script) -> Self {
        Self {
            script,
            seen: Arc::default(),
            accepted: Arc::default(),
        }
    }

    fn answer(&self, call: &str, body: Value, headers: Vec<(String, String)>) -> (u16, Value) {
        let answer = (self.script)(call, &body);
        self.seen.lock().push(Seen {
            call: call.to_string(),
            body,
            headers,
        });
        answer
    }

    pub fn calls(&self, call: &str) -> Vec<Seen> {
        self.seen
            .lock()
            .iter()
            .filter(|s| s.call == call)
            .cloned()
            .collect()
    }

    /// How many TCP connections the backend has accepted.
    pub fn connections(&self) -> usize {
        self.accepted.load(Ordering::SeqCst)
    }

    /// Serves the calls over HTTP: `POST /<call>`.
    pub async fn serve_http(&self) -> SocketAddr {
        async fn handle(
            State(b): State<Backend>,
            Path(call): Path<String>,
            headers: HeaderMap,
            body: String,
        ) -> axum::response::Response {
            use axum::response::IntoResponse;
            let headers = headers
                .iter()
                .map(|(n, v)| (n.to_string(), v.to_str().unwrap_or("").to_string()))
                .collect();
            let body: Value = serde_json::from_str(&body).unwrap_or(Value::Null);
            let (status, answer) = b.answer(&call, body, headers);
            if answer == json!("sleep") {
                tokio::time::sleep(SLEEP).await;
            }
            if answer == json!("garbage") {
                return (axum::http::StatusCode::OK, "not json {").into_response();
            }
            let status = axum::http::StatusCode::from_u16(status).unwrap();
            (status, axum::Json(answer)).into_response()
        }
        let app = axum::Router::new()
            .route("/{call}", axum::routing::post(handle))
            .with_state(self.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let accepted = self.accepted.clone();
        let listener = listener.tap_io(move |_| {
            accepted.fetch_add(1, Ordering::SeqCst);
        });
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        addr
    }

    /// Serves the same script as Centrifugo's gRPC proxy service.
    pub async fn serve_grpc(&self) -> SocketAddr {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let accepted = self.accepted.clone();
        let incoming = tonic::transport::server::TcpIncoming::from(listener).inspect(move |_| {
            accepted.fetch_add(1, Ordering::SeqCst);
        });
        let service = CentrifugoProxyServer::new(self.clone());
        tokio::spawn(async move {
            tonic::transport::Server::builder()
                .add_service(service)
                .serve_with_incoming(incoming)
                .await
                .unwrap()
        });
        addr
    }

    async fn grpc_answer<Req, Resp>(
        &self,
        call: &str,
        request: tonic::Request<Req>,
    ) -> Result<tonic::Response<Resp>, tonic::Status>
    where
        Req: serde::Serialize,
        Resp: serde::de::DeserializeOwned,
    {
        let headers = request
            .metadata()
            .clone()
            .into_headers()
            .iter()
            .map(|(n, v)| (n.to_string(), v.to_str().unwrap_or("").to_string()))
            .collect();
        let body = serde_json::to_value(request.get_ref()).unwrap();
        let (status, answer) = self.answer(call, body, headers);
        if answer == json!("sleep") {
            tokio::time::sleep(SLEEP).await;
            return Err(tonic::Status::deadline_exceeded("slept"));
        }
        if status != 200 {
            return Err(tonic::Status::internal("scripted failure"));
        }
        Ok(tonic::Response::new(
            serde_json::from_value(answer).unwrap(),
        ))
    }
}

#[tonic::async_trait]
impl CentrifugoProxy for Backend {
    async fn connect(
        &self,
        r: tonic::Request<pb::ConnectRequest>,
    ) -> Result<tonic::Response<pb::ConnectResponse>, tonic::Status> {
        self.grpc_answer("connect", r).await
    }
    async fn refresh(
        &self,
        r: tonic::Request<pb::RefreshRequest>,
    ) -> Result<tonic::Response<pb::RefreshResponse>, tonic::Status> {
        self.grpc_answer("refresh", r).await
    }
    async fn subscribe(
        &self,
        r: tonic::Request<pb::SubscribeRequest>,
    ) -> Result<tonic::Response<pb::SubscribeResponse>, tonic::Status> {
        if r.get_ref().channel == "px:notjson" {
            // What no JSON answer can carry: raw bytes that are not JSON.
            let result = pb::SubscribeResult {
                data: b"not json".to_vec(),
                ..Default::default()
            };
            return Ok(tonic::Response::new(pb::SubscribeResponse {
                result: Some(result),
                ..Default::default()
            }));
        }
        self.grpc_answer("subscribe", r).await
    }
    async fn publish(
        &self,
        r: tonic::Request<pb::PublishRequest>,
    ) -> Result<tonic::Response<pb::PublishResponse>, tonic::Status> {
        self.grpc_answer("publish", r).await
    }
    async fn rpc(
        &self,
        r: tonic::Request<pb::RpcRequest>,
    ) -> Result<tonic::Response<pb::RpcResponse>, tonic::Status> {
        self.grpc_answer("rpc", r).await
    }
    async fn sub_refresh(
        &self,
        r: tonic::Request<pb::SubRefreshRequest>,
    ) -> Result<tonic::Response<pb::SubRefreshResponse>, tonic::Status> {
        self.grpc_answer("sub_refresh", r).await
    }
}
