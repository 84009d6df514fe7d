-- Idempotency keys of durable publications: a publish that names a key
-- already here for its channel, within the key's window (created_at is
-- newer than now minus the window), publishes nothing and gets this
-- publication's offset. Kept in the same transaction as the publication,
-- so a retry after a restart is still recognised; retention deletes keys
-- whose window has ended.
CREATE TABLE idempotency (
    channel    TEXT   NOT NULL,
    key        TEXT   NOT NULL,
    seq        BIGINT NOT NULL,
    created_at BIGINT NOT NULL,
    PRIMARY KEY (channel, key)
);
CREATE INDEX idempotency_created_at ON idempotency (created_at);
