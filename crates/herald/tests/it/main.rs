//! Integration tests: each starts a real Herald on 127.0.0.1:0 through the
//! same build path as `herald serve` (`herald_testkit::TestServer`) and
//! talks to it over real WebSocket and HTTP connections.

mod access;
mod admin;
mod api;
mod close;
mod compression;
mod connect;
mod delta;
mod dev;
mod emulation;
mod grpc;
mod hardening;
mod history;
mod jwks;
mod limits;
mod metrics;
mod ping;
mod presence;
mod protobuf;
mod proxy;
mod pusher;
mod server_side;
mod stalled_db;
mod streamed;
mod subscribe;
mod tags_filter;
mod uni;
mod webhook;
mod writes;
