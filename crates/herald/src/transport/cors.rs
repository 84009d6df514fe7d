//! CORS for the HTTP transports and the emulation endpoint, as Centrifugo
//! gives it: a page of an origin `client.allowed_origins` lets in may call
//! them from another origin (its requests carry `Origin`; the answer names
//! that origin, with credentials), and a browser's preflight `OPTIONS` is
//! answered with the methods and for five minutes.

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::header::{
    ACCESS_CONTROL_ALLOW_CREDENTIALS, ACCESS_CONTROL_ALLOW_HEADERS, ACCESS_CONTROL_ALLOW_METHODS,
    ACCESS_CONTROL_ALLOW_ORIGIN, ACCESS_CONTROL_MAX_AGE, ACCESS_CONTROL_REQUEST_HEADERS, ORIGIN,
    VARY,
};
use axum::http::{HeaderValue, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use crate::node::Node;

pub async fn cors(State(node): State<Arc<Node>>, request: Request, next: Next) -> Response {
    let headers = request.headers();
    let origin = headers
        .get(ORIGIN)
        .filter(|_| node.origins().allows(headers))
        .cloned();
    let asked = headers
        .get(ACCESS_CONTROL_REQUEST_HEADERS)
        .filter(|h| h.as_bytes() != b"null")
        .cloned();
    let mut response = if request.method() == Method::OPTIONS {
        let mut preflight = StatusCode::NO_CONTENT.into_response();
        let h = preflight.headers_mut();
        h.insert(ACCESS_CONTROL_MAX_AGE, HeaderValue::from_static("300"));
        h.insert(
            ACCESS_CONTROL_ALLOW_METHODS,
            HeaderValue::from_static("GET, POST, OPTIONS"),
        );
        preflight
    } else {
        next.run(request).await
    };
    let h = response.headers_mut();
    h.append(VARY, HeaderValue::from_static("origin"));
    if let Some(origin) = origin {
        h.insert(ACCESS_CONTROL_ALLOW_ORIGIN, origin);
        h.insert(
            ACCESS_CONTROL_ALLOW_CREDENTIALS,
            HeaderValue::from_static("true"),
        );
        if let Some(asked) = asked {
            h.insert(ACCESS_CONTROL_ALLOW_HEADERS, asked);
        }
    }
    response
}
