//! herald-bench: a load generator for a live Herald (or any server speaking
//! the Centrifugo client protocol v2 over JSON WebSocket and the v6 HTTP API).
//!
//! One module per scenario under [`scenario`]; they share the protocol
//! [`client`], the HTTP [`api`] publisher, [`stats`] (histograms and the
//! per-second progress line), [`target`] (URLs, tokens, the loopback rule)
//! and [`limits`] (open-file limit advice). The binary only parses flags and
//! prints a scenario's [`report`].

pub mod api;
pub mod backend;
pub mod bare;
pub mod client;
pub mod limits;
pub mod procfs;
pub mod protocol;
pub mod report;
pub mod scenario;
pub mod stats;
pub mod target;
