-- The version of what a stream's last versioned publication carried (the
-- server API's `version` and `version_epoch`): a publication whose version
-- is not above it, in the same version epoch or with none, is not appended.
ALTER TABLE streams ADD COLUMN version INTEGER NOT NULL DEFAULT 0;
ALTER TABLE streams ADD COLUMN version_epoch TEXT NOT NULL DEFAULT '';
