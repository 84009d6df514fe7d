//! The demo chat page served at `/` in `serve --dev`: a page and a minimal
//! client of the protocol in plain JavaScript, embedded in the binary.

use std::sync::Arc;

use axum::http::header;
use axum::routing::get;
use axum::Router;

use crate::node::Node;

const INDEX: &str = include_str!("../static/index.html");
const CLIENT: &str = include_str!("../static/herald-client.js");

pub fn routes() -> Router<Arc<Node>> {
    Router::new()
        .route(
            "/",
            get(|| async { ([(header::CONTENT_TYPE, "text/html; charset=utf-8")], INDEX) }),
        )
        .route(
            "/herald-client.js",
            get(|| async {
                (
                    [(header::CONTENT_TYPE, "text/javascript; charset=utf-8")],
                    CLIENT,
                )
            }),
        )
}
