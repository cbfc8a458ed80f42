-- The janitor purges tombstones older than the retention. An op that old
-- arriving later must not bring its pair back (CONTRACT: "an op older than
-- the compacted state is superseded"), so the purge raises this horizon
-- first, and workers supersede any op of an unknown pair at or before it.
CREATE TABLE compaction (
    singleton bool PRIMARY KEY DEFAULT true CHECK (singleton),
    horizon   timestamptz NOT NULL
);
INSERT INTO compaction (horizon) VALUES ('-infinity');

GRANT SELECT, UPDATE ON compaction TO addonreg_worker;
