//! Transports carry protocol frames between clients and sessions.

pub mod uni_stream;
pub mod upgrade;
pub mod wake;
pub mod websocket;
