-- Compaction is per pair, never by the clock (CONTRACT "How a record is
-- computed", clarified 2026-12-04). The global horizon this replaces made
-- every op of an unknown pair older than "now - retention" superseded, so a
-- launch-day backfill (issued_at years ago) was dropped.
--
-- Each pair now keeps its own compacted base: the fold of the ops compacted
-- away and the greatest key among them, {"t": micros, "w": write_id, "i":
-- index, "s": "registered"|"revoked"|null, "v": version|null, "r":
-- registered_at micros|null}; NULL while nothing was compacted. An op at or
-- below it is superseded. Tombstones stay (their delete is their pair's
-- newest op, which is never compacted), so nothing needs a global horizon.
ALTER TABLE records
    ADD COLUMN compacted jsonb,
    -- issued_at of the oldest kept op and how many are kept: the worker
    -- compacts when the oldest falls out of the retention or the count
    -- passes its bound, without reading the ops on the common path.
    -- NULL: unknown, so the next write reads the ops.
    ADD COLUMN oldest_op_at timestamptz,
    ADD COLUMN op_count integer;

UPDATE records r SET
    oldest_op_at = s.oldest,
    op_count = s.n
FROM (
    SELECT addon_id, sha256,
           timestamptz 'epoch' + min((e ->> 't')::bigint) * interval '1 microsecond' AS oldest,
           count(*)::integer AS n
    FROM records, jsonb_array_elements(ops) AS e
    GROUP BY addon_id, sha256
) s
WHERE r.addon_id = s.addon_id AND r.sha256 = s.sha256;

-- NULL (a row written by another tool, e.g. a test seeding records) makes
-- the worker read and refold the pair once, which sets both.
-- 0 when every op a row ever held was compacted or superseded (a seeded row
-- with no ops, then only older ops).
ALTER TABLE records ADD CHECK (op_count >= 0);

DROP INDEX records_tombstones;
DROP TABLE compaction;

-- When any worker's janitor last completed a round (it only purges
-- receipts now), for the worker's janitor_round_age_seconds gauge.
CREATE TABLE janitor (
    singleton     bool PRIMARY KEY DEFAULT true CHECK (singleton),
    last_round_at timestamptz NOT NULL
);
INSERT INTO janitor (last_round_at) VALUES ('-infinity');
GRANT SELECT, UPDATE ON janitor TO addonreg_worker;
