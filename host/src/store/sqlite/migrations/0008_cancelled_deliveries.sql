-- A delivery may be cancelled (issue 27): a new final status. SQLite cannot alter a CHECK
-- constraint, so the table is rebuilt as migration 4 did, keeping every row, its id, the
-- indexes, and the AUTOINCREMENT counter (dropping the table forgets its counter, and the new
-- one would otherwise restart after the largest id still stored: ids retention pruned would be
-- given out again). `migrate` runs this with foreign keys off and checks them before
-- committing.
CREATE TEMP TABLE kept_sequence AS SELECT seq FROM sqlite_sequence WHERE name = 'deliveries';
CREATE TABLE deliveries_v3 (
    id               INTEGER PRIMARY KEY AUTOINCREMENT,
    event_id         TEXT NOT NULL REFERENCES events(id),
    target           TEXT NOT NULL,
    status           TEXT NOT NULL
                     CHECK (status IN ('pending', 'in_flight', 'delivered', 'dead', 'discarded', 'paused',
                                       'cancelled')),
    attempts         INTEGER NOT NULL DEFAULT 0,
    attempt_seq      INTEGER NOT NULL DEFAULT 0,
    next_attempt_at  INTEGER NOT NULL,
    lease_owner      TEXT,
    lease_expires_at INTEGER,
    last_error       TEXT,
    delivered_at     INTEGER,
    ordering_key     TEXT,
    updated_at       INTEGER NOT NULL,
    UNIQUE (event_id, target)
) STRICT;
INSERT INTO deliveries_v3 (id, event_id, target, status, attempts, attempt_seq, next_attempt_at, lease_owner,
                           lease_expires_at, last_error, delivered_at, ordering_key, updated_at)
    SELECT id, event_id, target, status, attempts, attempt_seq, next_attempt_at, lease_owner,
           lease_expires_at, last_error, delivered_at, ordering_key, updated_at
    FROM deliveries;
DROP TABLE deliveries;
ALTER TABLE deliveries_v3 RENAME TO deliveries;
UPDATE sqlite_sequence SET seq = max(seq, coalesce((SELECT seq FROM kept_sequence), 0))
    WHERE name = 'deliveries';
INSERT INTO sqlite_sequence (name, seq)
    SELECT 'deliveries', seq FROM kept_sequence
    WHERE NOT EXISTS (SELECT 1 FROM sqlite_sequence WHERE name = 'deliveries');
DROP TABLE kept_sequence;
CREATE INDEX deliveries_due ON deliveries (target, status, next_attempt_at);
CREATE INDEX deliveries_expiry ON deliveries (lease_expires_at) WHERE status = 'in_flight';
CREATE INDEX deliveries_order ON deliveries (target, ordering_key, id) WHERE ordering_key IS NOT NULL;
CREATE INDEX deliveries_failed ON deliveries (status, updated_at) WHERE status IN ('dead', 'discarded');
