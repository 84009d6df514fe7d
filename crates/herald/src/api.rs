//! The HTTP server API: `POST /api/<method>` with a JSON body, authorised by
//! `X-API-Key: KEY` or `Authorization: apikey KEY`, replying
//! `{"result":…}` or `{"error":{"code","message"}}` as Centrifugo v6 does.

pub mod grpc;
mod methods;
pub mod openapi;
pub mod types;

use std::sync::Arc;

use axum::body::{Body, Bytes};
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use herald_protocol::ProtocolError;
use serde_json::{json, Value};

use crate::config::ErrorMode;
use crate::metrics::Counters;
use crate::node::Node;

pub use methods::{execute, execute_timed, read};

/// An error in a method's reply (HTTP 200 with an `error` object), or a
/// request that cannot be served at all (an HTTP status).
#[derive(Debug)]
pub enum ApiError {
    Reply { code: u32, message: String },
    Status(StatusCode, String),
}

impl From<ProtocolError> for ApiError {
    fn from(e: ProtocolError) -> Self {
        ApiError::Reply {
            code: e.code,
            message: e.message.to_string(),
        }
    }
}

impl ApiError {
    pub fn bad_request(message: impl Into<String>) -> Self {
        ApiError::Reply {
            code: ProtocolError::BAD_REQUEST.code,
            message: message.into(),
        }
    }
    /// The error's code and message.
    pub(crate) fn parts(&self) -> (u32, &str) {
        match self {
            ApiError::Reply { code, message } => (*code, message),
            ApiError::Status(_, message) => (ProtocolError::BAD_REQUEST.code, message),
        }
    }

    /// The HTTP status of the error in the transport error mode, as
    /// Centrifugo maps codes to statuses.
    fn http_status(&self) -> StatusCode {
        match self {
            ApiError::Status(status, _) => *status,
            ApiError::Reply { code, .. } => match code {
                102 | 104 => StatusCode::NOT_FOUND,
                107 | 108 => StatusCode::BAD_REQUEST,
                112 => StatusCode::RANGE_NOT_SATISFIABLE,
                113 => StatusCode::CONFLICT,
                _ => StatusCode::INTERNAL_SERVER_ERROR,
            },
        }
    }

    pub(crate) fn to_json(&self) -> Value {
        let (code, message) = self.parts();
        json!({"code": code, "message": message})
    }
}

fn authorised(node: &Node, headers: &HeaderMap) -> bool {
    use subtle::ConstantTimeEq;
    if node.config.http_api.insecure {
        return true;
    }
    let key = node.config.http_api.key.expose().as_bytes();
    if key.is_empty() {
        return false;
    }
    // Compared in constant time, so timing does not reveal the key.
    let matches = |given: &str| bool::from(given.trim().as_bytes().ct_eq(key));
    let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    if header("x-api-key").is_some_and(matches) {
        return true;
    }
    header("authorization")
        .and_then(|v| v.split_once(' '))
        .is_some_and(|(scheme, value)| scheme.eq_ignore_ascii_case("apikey") && matches(value))
}

pub async fn handle(
    State(node): State<Arc<Node>>,
    Path(method): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    Counters::incr(&node.counters.api_requests);
    if !authorised(&node, &headers) {
        return (StatusCode::UNAUTHORIZED, "unauthorized").into_response();
    }
    let body = match read_body(&node, body).await {
        Ok(body) => body,
        Err(refused) => return refused,
    };
    let body: &[u8] = if body.iter().all(u8::is_ascii_whitespace) {
        b"{}"
    } else {
        &body
    };
    let outcome = match read(&method, body) {
        Ok(request) => execute_timed(&node, request, "http").await,
        Err(e) => Err(e),
    };
    match outcome {
        // A batch reply is the list of replies itself, not wrapped in `result`.
        Ok(result) if method == "batch" => axum::Json(result).into_response(),
        Ok(result) => axum::Json(json!({ "result": result })).into_response(),
        Err(ApiError::Status(status, message)) => (status, message).into_response(),
        Err(e) if transport_errors(&node, &headers) => {
            (e.http_status(), axum::Json(e.to_json())).into_response()
        }
        Err(e) => axum::Json(json!({ "error": e.to_json() })).into_response(),
    }
}

/// Whether errors are answered with HTTP statuses: `http_api.error_mode`,
/// or the request's `X-Centrifugo-Error-Mode: transport`.
fn transport_errors(node: &Node, headers: &HeaderMap) -> bool {
    node.config.http_api.error_mode == ErrorMode::Transport
        || headers
            .get("x-centrifugo-error-mode")
            .is_some_and(|v| v.as_bytes() == b"transport")
}

/// The request body, whole, within `http_server.request_body_timeout` (a
/// body that trickles in or stalls holds a connection and its memory) and
/// `http_api.max_request_body_size`: 408 or 413 otherwise.
async fn read_body(node: &Node, body: Body) -> Result<Bytes, Response> {
    let limit = node.config.http_api.max_request_body_size;
    let timeout = node.config.http_server.request_body_timeout.0;
    crate::body::read(body, limit, timeout).await
}
