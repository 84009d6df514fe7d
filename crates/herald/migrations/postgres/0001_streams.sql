-- Durable channel streams (PostgreSQL). Offsets are `seq`; times are Unix ms.

-- One row per channel that was ever published to or read: its epoch and the
-- offset of its newest publication (`top`), kept when publications are
-- removed or trimmed so that offsets are never reused. Appends reserve
-- offsets by incrementing `top` under the row lock, which keeps offsets
-- gap-free even with several Herald nodes on one database.
CREATE TABLE streams (
    channel    TEXT   NOT NULL PRIMARY KEY,
    epoch      TEXT   NOT NULL,
    top        BIGINT NOT NULL DEFAULT 0,
    created_at BIGINT NOT NULL
);

-- The publications still retained. `data` is the raw JSON payload; the
-- info_* columns rebuild the publisher's ClientInfo (all NULL when it had
-- none); `tags` is a JSON object, NULL when empty.
CREATE TABLE publications (
    channel     TEXT   NOT NULL,
    seq         BIGINT NOT NULL,
    data        BYTEA  NOT NULL,
    info_user   TEXT,
    info_client TEXT,
    conn_info   BYTEA,
    chan_info   BYTEA,
    tags        TEXT,
    created_at  BIGINT NOT NULL,
    PRIMARY KEY (channel, seq)
);
