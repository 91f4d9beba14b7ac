-- nanocore store, schema version 4: what a migration record needs beyond Nano's fields.
-- kind: 'manual' (POST /migrations/) or 'failover' (guests of a lost Cell re-placed);
-- start_time/end_time: clock seconds; end_time 0 while running, and the start of the
-- record's retention once it has ended (Nano deleted a record when it was first read).
-- A record from before this version ended when its Core stopped: end_time 0 with finished
-- or an error is expired at the next start.

ALTER TABLE migration ADD COLUMN kind TEXT NOT NULL DEFAULT 'manual'
    CHECK (kind IN ('manual', 'failover'));
ALTER TABLE migration ADD COLUMN start_time REAL NOT NULL DEFAULT 0;
ALTER TABLE migration ADD COLUMN end_time REAL NOT NULL DEFAULT 0;
