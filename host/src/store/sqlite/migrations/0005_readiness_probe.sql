
-- One row that `/readyz` writes to prove the store accepts writes (Store::probe_write).
CREATE TABLE readiness_probe (
    id        INTEGER PRIMARY KEY CHECK (id = 1),
    probed_at INTEGER NOT NULL
) STRICT;
