-- Webhook deliveries: one row per event and webhook, written before it is
-- sent, deleted once delivered. A row is due at next_at (ms) unless a node
-- claimed it until claimed_until (ms); dead = 1 keeps it as a dead letter
-- after its last attempt.
CREATE TABLE webhook_events (
    id            TEXT    NOT NULL PRIMARY KEY,
    hook          TEXT    NOT NULL,
    event         TEXT    NOT NULL,
    body          TEXT    NOT NULL,
    attempts      BIGINT  NOT NULL DEFAULT 0,
    next_at       BIGINT  NOT NULL,
    claimed_until BIGINT  NOT NULL DEFAULT 0,
    dead          INTEGER NOT NULL DEFAULT 0,
    last_error    TEXT    NOT NULL DEFAULT '',
    created_ms    BIGINT  NOT NULL
);
CREATE INDEX webhook_events_due ON webhook_events (dead, next_at);

-- Which nodes hold a user's connections ('user') or a channel's
-- subscribers ('channel'): the first row of a key is the user online (the
-- channel occupied), its last one gone the user offline (vacated).
CREATE TABLE webhook_holders (
    kind TEXT NOT NULL,
    key  TEXT NOT NULL,
    node TEXT NOT NULL,
    PRIMARY KEY (kind, key, node)
);

-- Nodes that hold rows, with when each was last seen; a node unseen for a
-- minute is gone, and others release what it held.
CREATE TABLE webhook_nodes (
    node    TEXT   NOT NULL PRIMARY KEY,
    seen_ms BIGINT NOT NULL
);
