//! The format-independent data model: what a publication and a client's
//! identity are, whatever codec carries them. A publication caches its encoded
//! push per format so that fan-out serialises it once, not once per subscriber.

use std::collections::BTreeMap;
use std::sync::{Arc, OnceLock};

use bytes::Bytes;

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
    json_push: OnceLock<Bytes>,
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
            json_push: OnceLock::new(),
        }
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

    /// The publication as a complete JSON push frame, encoded on first use and
    /// shared by every subscriber afterwards.
    pub fn json_push(&self) -> &Bytes {
        self.json_push
            .get_or_init(|| crate::json::encode_publication_push(self))
    }
}

/// Someone joined or left a channel, pushed to subscribers that asked for
/// join/leave events. Encoded once like a publication.
#[derive(Debug)]
pub struct PresenceEvent {
    pub channel: Arc<str>,
    pub info: Arc<ClientInfo>,
    pub join: bool,
    json_push: OnceLock<Bytes>,
}

impl PresenceEvent {
    pub fn new(channel: Arc<str>, info: Arc<ClientInfo>, join: bool) -> Self {
        Self {
            channel,
            info,
            join,
            json_push: OnceLock::new(),
        }
    }

    pub fn json_push(&self) -> &Bytes {
        self.json_push.get_or_init(|| {
            let push = if self.join {
                crate::reply::Push::Join {
                    channel: self.channel.to_string(),
                    info: self.info.clone(),
                }
            } else {
                crate::reply::Push::Leave {
                    channel: self.channel.to_string(),
                    info: self.info.clone(),
                }
            };
            Bytes::from(crate::json::encode_push(&push))
        })
    }
}
