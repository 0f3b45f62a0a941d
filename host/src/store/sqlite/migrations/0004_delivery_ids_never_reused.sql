-- Delivery ids are never reused. An `INTEGER PRIMARY KEY` without AUTOINCREMENT takes the
-- largest id + 1: once retention pruned the newest deliveries, new ones got ids that had
-- been given out before, and keys built from them (`outboxd.delivery.dead:<id>:<seq>`, the
-- dead-letter API's ids) collided. The table is rebuilt with AUTOINCREMENT (SQLite cannot
-- alter a key), keeping every row, its id and the indexes; `migrate` runs this with foreign
-- keys off and checks them before committing.
CREATE TABLE deliveries_v2 (
    id               INTEGER PRIMARY KEY AUTOINCREMENT,
    event_id         TEXT NOT NULL REFERENCES events(id),
    target           TEXT NOT NULL,
    status           TEXT NOT NULL
                     CHECK (status IN ('pending', 'in_flight', 'delivered', 'dead', 'discarded', 'paused')),
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
INSERT INTO deliveries_v2 (id, event_id, target, status, attempts, attempt_seq, next_attempt_at, lease_owner,
                           lease_expires_at, last_error, delivered_at, ordering_key, updated_at)
    SELECT id, event_id, target, status, attempts, attempt_seq, next_attempt_at, lease_owner,
           lease_expires_at, last_error, delivered_at, ordering_key, updated_at
    FROM deliveries;
DROP TABLE deliveries;
ALTER TABLE deliveries_v2 RENAME TO deliveries;
CREATE INDEX deliveries_due ON deliveries (target, status, next_attempt_at);
CREATE INDEX deliveries_expiry ON deliveries (lease_expires_at) WHERE status = 'in_flight';
CREATE INDEX deliveries_order ON deliveries (target, ordering_key, id) WHERE ordering_key IS NOT NULL;
CREATE INDEX deliveries_failed ON deliveries (status, updated_at) WHERE status IN ('dead', 'discarded');
