-- One row per (addon_id, sha256) ever written: the folded record plus the ops
-- it was folded from, so a late op can recompute it (CONTRACT "How a record is
-- computed"). A deleted pair stays as a tombstone (status 'deleted').
CREATE TABLE records (
    -- "C": ids compare exactly, byte by byte, as the contract says.
    addon_id      text COLLATE "C" NOT NULL CHECK (octet_length(addon_id) BETWEEN 1 AND 255),
    -- 32 raw bytes; byte order is the order of the lowercase hex.
    sha256        bytea NOT NULL CHECK (octet_length(sha256) = 32),
    status        text NOT NULL CHECK (status IN ('registered', 'revoked', 'deleted')),
    version       text CHECK (octet_length(version) <= 128),
    registered_at timestamptz,
    -- issued_at of the newest op folded in; with the two columns below it is
    -- that op's key, so an op with a greater key can be folded in place.
    updated_at    timestamptz NOT NULL,
    last_write_id text COLLATE "C" NOT NULL,
    last_op_index integer NOT NULL,
    -- Every op kept for this pair: [{"t": micros, "w": write_id, "i": index,
    -- "op": "register"|"revoke"|"delete", "v": version|null}, ...].
    ops           jsonb NOT NULL,
    PRIMARY KEY (addon_id, sha256)
);

-- The janitor finds old tombstones without scanning live records.
CREATE INDEX records_tombstones ON records (updated_at) WHERE status = 'deleted';

CREATE TABLE receipts (
    write_id     text COLLATE "C" PRIMARY KEY
                 CHECK (write_id ~ '^[A-Za-z0-9._:-]{1,64}$'),
    status       text NOT NULL CHECK (status IN ('applied', 'superseded', 'rejected')),
    reason       text,
    processed_at timestamptz NOT NULL DEFAULT now(),
    CHECK ((status = 'rejected') = (reason IS NOT NULL))
);

-- processed_at grows with insertion order: BRIN is tiny and enough for purges.
CREATE INDEX receipts_processed_at ON receipts USING brin (processed_at);
