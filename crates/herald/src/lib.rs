//! Herald: a real-time messaging server speaking the Centrifugo client
//! protocol v2 and server API. See ARCHITECTURE.md for the map.

pub mod access;
pub mod admin;
pub mod api;
pub mod auth;
pub mod body;
pub mod broker;
pub mod channel;
pub mod cli;
mod client_tls;
pub mod clock;
pub mod cluster;
pub mod config;
mod demo;
pub mod engine;
pub mod frame;
pub mod hub;
pub mod idempotency;
pub mod metrics;
pub mod node;
pub mod origin;
pub mod pattern;
pub mod presence;
pub mod proxy;
pub mod pusher;
pub mod ratelimit;
pub mod redis_link;
pub mod report;
pub mod server;
pub mod session;
pub mod sharded;
pub mod signing;
pub mod store;
pub mod transport;
pub mod webhook;
pub mod wire;

/// This build's version, as `info` and the connect reply show it.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
