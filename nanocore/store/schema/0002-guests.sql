-- nanocore store, schema version 2: what the guest lifecycle (issue #10) keeps.
-- The media image a guest was started from, the failures a client has yet to read (and the
-- Cells that may still hold a guest whose creation failed), and the per-pool index the
-- instance lists and the compute pool checks read.

ALTER TABLE instance ADD COLUMN media_source TEXT NOT NULL DEFAULT '';
CREATE INDEX instance_pool ON instance (pool);

CREATE TABLE pending_error (
    id TEXT PRIMARY KEY,
    error TEXT NOT NULL,
    cell TEXT NOT NULL,
    shown INTEGER NOT NULL
);
