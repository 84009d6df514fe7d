//! A publication as a row of the `publications` table, both ways.

use std::collections::BTreeMap;
use std::sync::Arc;

use bytes::Bytes;
use herald_protocol::{ClientInfo, Publication};

use crate::store::StoreError;

/// Refuses what a text column cannot hold (PostgreSQL's text takes no NUL
/// character): the channel name, the publisher's user and client ids and
/// the idempotency key.
/// Channel names with control characters are refused before they get here;
/// this guards every path into the store all the same.
pub(super) fn check(p: &Publication, key: Option<&str>) -> Result<(), StoreError> {
    let info = p.info.as_deref();
    let texts = [
        Some(&*p.channel),
        info.map(|i| i.user.as_str()),
        info.map(|i| i.client.as_str()),
        key,
    ];
    if texts.into_iter().flatten().any(|t| t.contains('\0')) {
        return Err(StoreError::Invalid(
            "a NUL character in a channel, user or client id or an idempotency key",
        ));
    }
    Ok(())
}

/// A publication's columns as stored (see the migrations), but its offset,
/// which the commit computes in SQL.
pub(super) struct NewRow<'a> {
    pub(super) channel: &'a str,
    pub(super) data: &'a [u8],
    pub(super) info_user: Option<&'a str>,
    pub(super) info_client: Option<&'a str>,
    pub(super) conn_info: Option<&'a [u8]>,
    pub(super) chan_info: Option<&'a [u8]>,
    pub(super) tags: Option<String>,
}

impl<'a> NewRow<'a> {
    pub(super) fn new(p: &'a Publication) -> Self {
        let info = p.info.as_deref();
        Self {
            channel: &p.channel,
            data: &p.data,
            info_user: info.map(|i| i.user.as_str()),
            info_client: info.map(|i| i.client.as_str()),
            conn_info: info.and_then(|i| i.conn_info.as_deref()),
            chan_info: info.and_then(|i| i.chan_info.as_deref()),
            tags: (!p.tags.is_empty())
                .then(|| serde_json::to_string(&p.tags).expect("string map serialises")),
        }
    }
}

/// A publication's columns as read back.
#[derive(sqlx::FromRow)]
pub(super) struct StoredRow {
    pub(super) seq: i64,
    pub(super) data: Vec<u8>,
    pub(super) info_user: Option<String>,
    pub(super) info_client: Option<String>,
    pub(super) conn_info: Option<Vec<u8>>,
    pub(super) chan_info: Option<Vec<u8>>,
    pub(super) tags: Option<String>,
}

impl StoredRow {
    pub(super) fn into_publication(self, channel: &Arc<str>) -> Result<Publication, StoreError> {
        let info = self.info_user.map(|user| {
            Arc::new(ClientInfo {
                user,
                client: self.info_client.unwrap_or_default(),
                conn_info: self.conn_info.map(Bytes::from),
                chan_info: self.chan_info.map(Bytes::from),
            })
        });
        let tags = match self.tags {
            Some(json) => serde_json::from_str(&json).map_err(|source| StoreError::Corrupt {
                channel: channel.to_string(),
                offset: self.seq,
                source,
            })?,
            None => BTreeMap::new(),
        };
        Ok(
            Publication::new(channel.clone(), Bytes::from(self.data), info)
                .with_offset(self.seq as u64)
                .with_tags(tags),
        )
    }
}
