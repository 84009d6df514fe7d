//! Transports carry protocol frames between clients and sessions.

pub mod uni_stream;
mod upgrade;
pub mod websocket;
