//! Transports carry protocol frames between clients and sessions.

mod upgrade;
pub mod websocket;
