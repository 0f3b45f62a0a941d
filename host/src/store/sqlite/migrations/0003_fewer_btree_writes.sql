
-- Fewer b-tree writes per delivery. Every query by lease owner also says
-- `status = 'in_flight'`, which `deliveries_expiry` covers: the owner index only cost an
-- insert at each claim and a delete at each settle. The history is keyed by (delivery, n)
-- and read only by that key: without a rowid it is one b-tree instead of a table and an
-- index, so writing an attempt touches one.
DROP INDEX deliveries_lease;
CREATE TABLE attempts_v2 (
    delivery_id INTEGER NOT NULL REFERENCES deliveries(id),
    n           INTEGER NOT NULL,
    started_at  INTEGER NOT NULL,
    duration_ms INTEGER,
    outcome     TEXT NOT NULL CHECK (outcome IN ('running', 'delivered', 'retry', 'permanent', 'abandoned')),
    error       TEXT,
    plugin_hash TEXT,
    PRIMARY KEY (delivery_id, n)
) STRICT, WITHOUT ROWID;
INSERT INTO attempts_v2 (delivery_id, n, started_at, duration_ms, outcome, error, plugin_hash)
    SELECT delivery_id, n, started_at, duration_ms, outcome, error, plugin_hash FROM attempts;
DROP TABLE attempts;
ALTER TABLE attempts_v2 RENAME TO attempts;
