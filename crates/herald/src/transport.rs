//! Transports carry protocol frames between clients and sessions.

mod gate;
pub mod websocket;
