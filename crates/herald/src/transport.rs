//! Transports carry protocol frames between clients and sessions.

pub mod websocket;
