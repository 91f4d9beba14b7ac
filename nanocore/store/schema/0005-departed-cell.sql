-- nanocore store, schema version 5: the Cells that left with their goodbye while Core ran and
-- have not linked since (a Cell stopped on purpose may leave its guests running), so that a
-- Core started again does not presume them lost and fail their guests over.

CREATE TABLE departed_cell (
    name TEXT PRIMARY KEY
);
