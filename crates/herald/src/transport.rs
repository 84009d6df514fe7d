//! Transports carry protocol frames between clients and sessions.

pub mod admission;
pub mod cors;
pub mod deflate;
pub mod emulation;
pub mod stream;
pub mod uni_grpc;
pub mod upgrade;
pub mod wake;
pub mod websocket;
