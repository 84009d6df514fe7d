//! The format-independent data model: what a publication and a client's
//! identity are, whatever codec carries them. A publication keeps its
//! encodings beside it ([`Encodings`]) so that fan-out serialises it once per
//! format, not once per subscriber.

use std::collections::BTreeMap;
use std::sync::Arc;

use bytes::Bytes;

use crate::encodings::{Encodings, Format};

/// Who a client is, as shown to others in publications, presence and
/// join/leave events. `conn_info` and `chan_info` are raw JSON.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ClientInfo {
    pub user: String,
    pub client: String,
    pub conn_info: Option<Bytes>,
    pub chan_info: Option<Bytes>,
}

/// One message in one channel. `data` holds the payload as raw JSON text.
#[derive(Debug)]
pub struct Publication {
    pub channel: Arc<str>,
    pub data: Bytes,
    pub info: Option<Arc<ClientInfo>>,
    /// Position in the channel's stream; 0 when the channel keeps no history.
    pub offset: u64,
    pub tags: BTreeMap<String, String>,
    /// The epoch of the stream `offset` belongs to (never sent to clients in
    /// a push; lets receivers notice that a stream started over).
    pub epoch: Option<Arc<str>>,
    /// `data` is a Fossil delta against the channel's previous publication,
    /// sent as `delta: true` (see [`Publication::with_data`]).
    pub delta: bool,
    /// The publisher allows subscribers that negotiated deltas to get this
    /// publication as one (never sent to clients).
    pub use_delta: bool,
    encodings: Encodings,
}

impl Publication {
    pub fn new(channel: Arc<str>, data: Bytes, info: Option<Arc<ClientInfo>>) -> Self {
        Self {
            channel,
            data,
            info,
            offset: 0,
            tags: BTreeMap::new(),
            epoch: None,
            delta: false,
            use_delta: false,
            encodings: Encodings::default(),
        }
    }

    /// The same publication carrying other `data` (with its own
    /// encodings): the form a delta subscriber gets, `delta` when `data`
    /// is a patch.
    pub fn with_data(&self, data: Bytes, delta: bool) -> Self {
        Self {
            channel: self.channel.clone(),
            data,
            info: self.info.clone(),
            offset: self.offset,
            tags: self.tags.clone(),
            epoch: self.epoch.clone(),
            delta,
            use_delta: false,
            encodings: Encodings::default(),
        }
    }

    pub fn with_use_delta(mut self, use_delta: bool) -> Self {
        self.use_delta = use_delta;
        self
    }

    pub fn with_offset(mut self, offset: u64) -> Self {
        self.offset = offset;
        self
    }

    pub fn with_epoch(mut self, epoch: Arc<str>) -> Self {
        self.epoch = Some(epoch);
        self
    }

    pub fn with_tags(mut self, tags: BTreeMap<String, String>) -> Self {
        self.tags = tags;
        self
    }

    /// The publication as a push in format `F`, encoded on first use and
    /// shared by every subscriber afterwards.
    pub fn frame<F: Format<Self>>(&self) -> Option<F::Frame> {
        self.encodings.get::<Self, F>(self)
    }
}

/// Someone joined or left a channel, pushed to subscribers that asked for
/// join/leave events. Encoded once per format like a publication.
#[derive(Debug)]
pub struct PresenceEvent {
    pub channel: Arc<str>,
    pub info: Arc<ClientInfo>,
    pub join: bool,
    encodings: Encodings,
}

impl PresenceEvent {
    pub fn new(channel: Arc<str>, info: Arc<ClientInfo>, join: bool) -> Self {
        Self {
            channel,
            info,
            join,
            encodings: Encodings::default(),
        }
    }

    /// The event as a push in format `F`, encoded on first use.
    pub fn frame<F: Format<Self>>(&self) -> Option<F::Frame> {
        self.encodings.get::<Self, F>(self)
    }
}
