//! Herald: a real-time messaging server speaking the Centrifugo client
//! protocol v2 and server API. See ARCHITECTURE.md for the map.

pub mod api;
pub mod auth;
pub mod broker;
pub mod channel;
pub mod cli;
pub mod cluster;
pub mod config;
mod demo;
pub mod hub;
pub mod node;
pub mod origin;
pub mod pattern;
pub mod presence;
pub mod server;
pub mod session;
pub mod store;
pub mod transport;
