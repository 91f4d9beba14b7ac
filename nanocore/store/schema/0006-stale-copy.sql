-- nanocore store, schema version 6: the guests failed over away from a lost Cell, which may
-- still hold a copy of each (a hung host, a partition). When the Cell links again it is told
-- to let go of a copy of a guest deleted meanwhile, instead of Core adopting it back.

CREATE TABLE stale_copy (
    cell TEXT NOT NULL,
    guest TEXT NOT NULL,
    PRIMARY KEY (cell, guest)
);
