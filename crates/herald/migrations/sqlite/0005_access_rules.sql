-- Access rules: blocked users ('block', subject = user), revoked token ids
-- ('token', subject = jti) and users' tokens invalidated by issue time
-- ('user_tokens', subject = user; channel '' for connection tokens, else
-- subscription tokens of that channel). expire_at is Unix seconds, 0 for
-- never; every node loads the rules in force and deletes ended ones.
CREATE TABLE access_rules (
    kind          TEXT   NOT NULL,
    subject       TEXT   NOT NULL,
    channel       TEXT   NOT NULL,
    issued_before INTEGER NOT NULL,
    expire_at     INTEGER NOT NULL,
    PRIMARY KEY (kind, subject, channel)
) WITHOUT ROWID;
