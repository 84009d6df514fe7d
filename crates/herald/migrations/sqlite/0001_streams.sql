-- Durable channel streams (SQLite). Offsets are `seq`; times are Unix ms.

-- One row per channel that was ever published to or read: its epoch and the
-- offset of its newest publication (`top`), kept when publications are
-- removed or trimmed so that offsets are never reused.
CREATE TABLE streams (
    channel    TEXT    NOT NULL PRIMARY KEY,
    epoch      TEXT    NOT NULL,
    top        INTEGER NOT NULL DEFAULT 0,
    created_at INTEGER NOT NULL
) WITHOUT ROWID;

-- The publications still retained. `data` is the raw JSON payload; the
-- info_* columns rebuild the publisher's ClientInfo (all NULL when it had
-- none); `tags` is a JSON object, NULL when empty.
CREATE TABLE publications (
    channel     TEXT    NOT NULL,
    seq         INTEGER NOT NULL,
    data        BLOB    NOT NULL,
    info_user   TEXT,
    info_client TEXT,
    conn_info   BLOB,
    chan_info   BLOB,
    tags        TEXT,
    created_at  INTEGER NOT NULL,
    PRIMARY KEY (channel, seq)
);
