//! Memory-history streams kept in Redis for a cluster. One script appends:
//! it takes the channel's next offset from the stream's meta hash, adds the
//! publication to a Redis stream (trimmed to the namespace's size, entry id
//! `<offset>-1`) and publishes it on the channel's pub/sub channel, all at
//! once, so every node sees one order per channel. The meta hash holds the
//! top offset (`s`) and the epoch (`e`); when it has expired or Redis lost
//! it, a new epoch starts and clients cannot recover across it.
//!
//! Reading a stream that does not exist creates nothing: it is reported at
//! offset 0 in the epoch a stream created now gets — the shard's seed (a
//! key of its own, made once; lost with the rest when Redis loses data) and
//! the current period of the channel's meta TTL. A stream created again
//! after its meta expired was idle a whole TTL, so its epoch differs.

use std::sync::{Arc, LazyLock};

use futures_util::future::BoxFuture;
use herald_protocol::Publication;
use redis::Value;

use super::{
    new_epoch, select, Conditions, HistoryPage, HistoryQuery, Store, StoreError, StreamOptions,
    StreamPosition,
};
use crate::redis_link::{as_string, as_u64, RedisError, RedisShards};
use crate::wire;

/// The epoch of a stream created now (KEYS[seed], a candidate seed, meta
/// ttl seconds, now in ms); shared by both scripts.
const EPOCH_NOW: &str = r#"
local function epoch_now(seed_key, candidate, meta_ttl, now_ms)
  local seed = redis.call('get', seed_key)
  if not seed then
    seed = candidate
    redis.call('set', seed_key, seed)
  end
  local period = 0
  if meta_ttl ~= '0' then
    period = math.floor(tonumber(now_ms) / (tonumber(meta_ttl) * 1000))
  end
  return seed .. string.format('%x', period)
end
"#;

/// KEYS: stream, meta, pub/sub channel, seed, idempotency key (unused
/// without one). ARGV: message tail, size, ttl seconds, meta ttl seconds,
/// candidate seed, now (ms), the key's window in ms ('0': no key), the
/// version ('0': none) and its epoch. A key seen within its window appends
/// nothing: the first append's offset and epoch come back, with a third
/// element; so does a stale version, with the stream's top. The meta hash
/// keeps the last version (`v`) and its epoch (`ve`).
const APPEND: &str = r#"
if ARGV[7] ~= '0' then
  local known = redis.call('get', KEYS[5])
  if known then
    local offset, epoch = string.match(known, '^(%d+) (.*)$')
    return {tonumber(offset), epoch, 1}
  end
end
local epoch = redis.call('hget', KEYS[2], 'e')
if not epoch then
  epoch = epoch_now(KEYS[4], ARGV[5], ARGV[4], ARGV[6])
  redis.call('hset', KEYS[2], 'e', epoch)
  redis.call('del', KEYS[1])
end
if ARGV[8] ~= '0' then
  local last = redis.call('hmget', KEYS[2], 'v', 've', 's')
  if last[1] and (ARGV[9] == '' or ARGV[9] == last[2])
      and tonumber(last[1]) >= tonumber(ARGV[8]) then
    return {tonumber(last[3] or '0'), epoch, 2}
  end
  redis.call('hset', KEYS[2], 'v', ARGV[8], 've', ARGV[9])
end
local top = redis.call('hincrby', KEYS[2], 's', 1)
if ARGV[4] ~= '0' then redis.call('expire', KEYS[2], ARGV[4]) end
local message = '{"o":' .. top .. ',"e":"' .. epoch .. '",' .. ARGV[1]
redis.call('xadd', KEYS[1], 'MAXLEN', ARGV[2], top .. '-1', 'd', message, 't', ARGV[6])
if ARGV[3] ~= '0' then redis.call('expire', KEYS[1], ARGV[3]) end
redis.call('publish', KEYS[3], message)
if ARGV[7] ~= '0' then
  redis.call('set', KEYS[5], top .. ' ' .. epoch, 'PX', ARGV[7])
end
return {top, epoch}
"#;

/// KEYS: stream, meta, seed. ARGV: candidate seed, meta ttl seconds, first
/// id or '' for none, now (ms). Returns top, epoch and the entries from the
/// first id on.
const READ: &str = r#"
local epoch = redis.call('hget', KEYS[2], 'e')
if not epoch then
  return {0, epoch_now(KEYS[3], ARGV[1], ARGV[2], ARGV[4]), {}}
end
local top = redis.call('hget', KEYS[2], 's') or '0'
if ARGV[2] ~= '0' then redis.call('expire', KEYS[2], ARGV[2]) end
local entries = {}
if ARGV[3] ~= '' then entries = redis.call('xrange', KEYS[1], ARGV[3], '+') end
return {top, epoch, entries}
"#;

/// Streams of a channel live on the channel's shard.
pub struct RedisStore {
    shards: RedisShards,
}

impl RedisStore {
    pub fn new(shards: RedisShards) -> Self {
        Self { shards }
    }

    fn keys(&self, channel: &str) -> (String, String) {
        let link = self.shards.for_channel(channel);
        (link.key("stream", channel), link.key("meta", channel))
    }

    /// The seed key of `channel`'s shard.
    fn seed_key(&self, channel: &str) -> String {
        self.shards.for_channel(channel).key("seed", "streams")
    }
}

fn now_ms() -> u64 {
    crate::clock::now_ms().max(0) as u64
}

/// The scripts as sent, with the shared epoch function in front.
static APPEND_SCRIPT: LazyLock<String> = LazyLock::new(|| format!("{EPOCH_NOW}{APPEND}"));
static READ_SCRIPT: LazyLock<String> = LazyLock::new(|| format!("{EPOCH_NOW}{READ}"));

fn unexpected(what: &'static str) -> StoreError {
    RedisError::Reply(what).into()
}

/// Decodes XRANGE entries (`[id, [field, value, …]]`), skipping those older
/// than `ttl_ms` (zero: none).
fn entries(v: &Value, ttl_ms: u64, now: u64) -> Result<Vec<Arc<Publication>>, StoreError> {
    let Value::Array(items) = v else {
        return Ok(Vec::new());
    };
    let mut out = Vec::with_capacity(items.len());
    for item in items {
        let Value::Array(pair) = item else { continue };
        let Some(Value::Array(fields)) = pair.get(1) else {
            continue;
        };
        let (mut data, mut time) = (None, 0);
        for kv in fields.chunks(2) {
            match (kv.first().and_then(as_string).as_deref(), kv.get(1)) {
                (Some("d"), Some(Value::BulkString(b))) => data = Some(b.as_slice()),
                (Some("t"), Some(t)) => time = as_u64(t).unwrap_or(0),
                _ => {}
            }
        }
        if ttl_ms > 0 && time + ttl_ms < now {
            continue;
        }
        let Some(data) = data else { continue };
        match wire::decode(data)? {
            wire::Message::Publication(p) => out.push(Arc::new(p)),
            wire::Message::Presence(_) => {}
        }
    }
    Ok(out)
}

impl RedisStore {
    /// Runs the append script (see [`APPEND`]); returns the position of
    /// the publication, and whether it was appended now (not a retry).
    fn run_append(
        &self,
        publication: &Publication,
        opts: &StreamOptions,
        conditions: &Conditions,
    ) -> BoxFuture<'static, Result<(StreamPosition, bool), StoreError>> {
        let channel = &*publication.channel;
        let link = self.shards.for_channel(channel);
        let (stream, meta) = self.keys(channel);
        let (version, version_epoch) = match &conditions.version {
            Some(v) => (v.version, v.epoch.as_str()),
            None => (0, ""),
        };
        let (once_key, window_ms) = match &conditions.once {
            Some(o) => (
                link.key("once", &format!("{channel}\0{}", o.key)),
                u64::try_from(o.window.as_millis())
                    .unwrap_or(u64::MAX)
                    .max(1),
            ),
            None => (String::new(), 0),
        };
        let mut cmd = redis::cmd("EVAL");
        cmd.arg(APPEND_SCRIPT.as_str())
            .arg(5)
            .arg(stream)
            .arg(meta)
            .arg(link.channel_key(channel))
            .arg(self.seed_key(channel))
            .arg(once_key)
            .arg(wire::publication_tail(publication))
            .arg(opts.size.max(1))
            .arg(opts.ttl.as_secs())
            .arg(opts.meta_ttl.as_secs())
            .arg(new_epoch())
            .arg(now_ms())
            .arg(window_ms)
            .arg(version)
            .arg(version_epoch);
        // Queued now, so appends from this node keep their order.
        let sent = link.send(cmd);
        Box::pin(async move {
            let reply = sent.await?;
            let Value::Array(parts) = reply else {
                return Err(unexpected("append script"));
            };
            let offset = parts
                .first()
                .and_then(as_u64)
                .ok_or_else(|| unexpected("no offset"))?;
            let epoch = parts
                .get(1)
                .and_then(as_string)
                .ok_or_else(|| unexpected("no epoch"))?;
            Ok((StreamPosition { offset, epoch }, parts.len() < 3))
        })
    }
}

impl Store for RedisStore {
    fn append(
        &self,
        publication: Publication,
        opts: StreamOptions,
    ) -> BoxFuture<'_, Result<Arc<Publication>, StoreError>> {
        let appended = self.run_append(&publication, &opts, &Conditions::default());
        Box::pin(async move {
            let (position, _) = appended.await?;
            let stored = publication
                .with_offset(position.offset)
                .with_epoch(Arc::from(position.epoch.as_str()));
            Ok(Arc::new(stored))
        })
    }

    fn append_if(
        &self,
        publication: Publication,
        opts: StreamOptions,
        conditions: Conditions,
    ) -> BoxFuture<'_, Result<StreamPosition, StoreError>> {
        let appended = self.run_append(&publication, &opts, &conditions);
        Box::pin(async move { Ok(appended.await?.0) })
    }

    fn history<'a>(
        &'a self,
        channel: &'a str,
        query: HistoryQuery,
        opts: StreamOptions,
    ) -> BoxFuture<'a, Result<HistoryPage, StoreError>> {
        let (stream, meta) = self.keys(channel);
        // Only the entries the query can use are read: after `since`, or the
        // whole (bounded) window.
        let first = match (&query.limit, &query.since) {
            (None, _) => String::new(),
            (Some(_), Some(since)) if !query.reverse => format!("{}-1", since.offset + 1),
            (Some(_), _) => "-".to_string(),
        };
        let mut cmd = redis::cmd("EVAL");
        cmd.arg(READ_SCRIPT.as_str())
            .arg(3)
            .arg(stream)
            .arg(meta)
            .arg(self.seed_key(channel))
            .arg(new_epoch())
            .arg(opts.meta_ttl.as_secs())
            .arg(first)
            .arg(now_ms());
        let sent = self.shards.for_channel(channel).send(cmd);
        Box::pin(async move {
            let Value::Array(parts) = sent.await? else {
                return Err(unexpected("read script"));
            };
            let position = StreamPosition {
                offset: parts.first().and_then(as_u64).unwrap_or(0),
                epoch: parts
                    .get(1)
                    .and_then(as_string)
                    .ok_or_else(|| unexpected("no epoch"))?,
            };
            let pubs = match parts.get(2) {
                Some(v) => entries(v, opts.ttl.as_millis() as u64, now_ms())?,
                None => Vec::new(),
            };
            let publications = select(&pubs, &position, &query)?;
            Ok(HistoryPage {
                publications,
                position,
            })
        })
    }

    fn remove<'a>(&'a self, channel: &'a str) -> BoxFuture<'a, Result<(), StoreError>> {
        let (stream, _) = self.keys(channel);
        let mut cmd = redis::cmd("DEL");
        cmd.arg(stream);
        let sent = self.shards.for_channel(channel).send(cmd);
        Box::pin(async move {
            sent.await?;
            Ok(())
        })
    }
}
