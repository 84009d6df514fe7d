//! The Centrifugo client protocol v2: the data model shared by the whole server
//! ([`model`]) with its per-format encodings ([`encodings`]), its error and
//! disconnect codes ([`codes`]), and the JSON and Protobuf codecs ([`json`],
//! [`protobuf`]). This crate does no I/O.

pub mod codes;
pub mod command;
pub mod encodings;
pub mod filter;
pub mod json;
pub mod model;
pub mod protobuf;
pub mod reply;

pub use codes::{Disconnect, ProtocolError};
pub use command::{Command, Method};
pub use encodings::Format;
pub use model::{ClientInfo, PresenceEvent, Publication};
