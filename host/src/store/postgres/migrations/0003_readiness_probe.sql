-- One row that `/readyz` writes to prove the store accepts writes (Store::probe_write); the
-- hosts sharing the database take turns on it.
CREATE TABLE readiness_probe (
    id        INTEGER PRIMARY KEY CHECK (id = 1),
    probed_at BIGINT NOT NULL
);
