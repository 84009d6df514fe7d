//! Request bodies read whole, within a size limit and a deadline: a body
//! that trickles in or stalls would otherwise hold a connection and its
//! memory. Used by the server API and the unidirectional HTTP transports.

use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};

/// `body`, whole: 413 past `limit` bytes, 408 when it is not all there
/// within `timeout`.
pub async fn read(body: Body, limit: usize, timeout: Duration) -> Result<Bytes, Response> {
    match tokio::time::timeout(timeout, axum::body::to_bytes(body, limit)).await {
        Ok(Ok(bytes)) => Ok(bytes),
        Ok(Err(_)) => {
            Err((StatusCode::PAYLOAD_TOO_LARGE, "request body too large").into_response())
        }
        Err(_) => Err((
            StatusCode::REQUEST_TIMEOUT,
            "request body not received in time",
        )
            .into_response()),
    }
}
