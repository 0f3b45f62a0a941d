
CREATE TABLE events (
    id              TEXT PRIMARY KEY,
    type            TEXT NOT NULL,
    payload         TEXT NOT NULL,
    headers         TEXT NOT NULL,
    idempotency_key TEXT,
    ordering_key    TEXT,
    created_at      BIGINT NOT NULL
);

-- The producer idempotency ledger. The key is written first, with ON CONFLICT DO NOTHING:
-- of two hosts ingesting the same key at once, the second waits for the first to commit and
-- then finds the key taken. The event row follows in the same transaction (deferred check).
CREATE TABLE idempotency_keys (
    key        TEXT PRIMARY KEY,
    -- No foreign key: retention may keep a key longer than its event (idempotency_retention),
    -- so a late producer retry is still recognised.
    event_id   TEXT NOT NULL,
    created_at BIGINT NOT NULL
);
CREATE INDEX idempotency_keys_age ON idempotency_keys (created_at);
CREATE INDEX events_age ON events (created_at);

CREATE TABLE deliveries (
    id               BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    event_id         TEXT NOT NULL REFERENCES events(id),
    target           TEXT NOT NULL,
    status           TEXT NOT NULL
                     CHECK (status IN ('pending', 'in_flight', 'delivered', 'dead', 'discarded', 'paused')),
    attempts         INTEGER NOT NULL DEFAULT 0,
    attempt_seq      INTEGER NOT NULL DEFAULT 0,
    next_attempt_at  BIGINT NOT NULL,
    lease_owner      TEXT,
    lease_expires_at BIGINT,
    last_error       TEXT,
    delivered_at     BIGINT,
    ordering_key     TEXT,
    updated_at       BIGINT NOT NULL,
    UNIQUE (event_id, target)
);
-- The claim query: due pending deliveries of one target, oldest first. Partial, so it stays
-- as small as the backlog however many delivered rows the table holds.
CREATE INDEX deliveries_due ON deliveries (target, next_attempt_at, id) WHERE status = 'pending';
CREATE INDEX deliveries_expiry ON deliveries (lease_expires_at) WHERE status = 'in_flight';
CREATE INDEX deliveries_lease ON deliveries (lease_owner) WHERE lease_owner IS NOT NULL;
CREATE INDEX deliveries_order ON deliveries (target, ordering_key, id) WHERE ordering_key IS NOT NULL;
CREATE INDEX deliveries_failed ON deliveries (status, updated_at) WHERE status IN ('dead', 'discarded');
CREATE INDEX deliveries_paused ON deliveries (target) WHERE status = 'paused';
CREATE INDEX deliveries_counts ON deliveries (target, status);
-- Every row is updated several times in its life (claim, settle, retries): vacuum it early
-- and often so the partial indexes stay small, and leave room on each page for updates that
-- stay on the page (HOT).
ALTER TABLE deliveries SET (
    fillfactor = 80,
    autovacuum_vacuum_scale_factor = 0.01,
    autovacuum_vacuum_insert_scale_factor = 0.05,
    autovacuum_analyze_scale_factor = 0.02,
    autovacuum_vacuum_cost_delay = 1
);

CREATE TABLE attempts (
    delivery_id BIGINT NOT NULL REFERENCES deliveries(id),
    n           INTEGER NOT NULL,
    started_at  BIGINT NOT NULL,
    duration_ms BIGINT,
    outcome     TEXT NOT NULL CHECK (outcome IN ('running', 'delivered', 'retry', 'permanent', 'abandoned')),
    error       TEXT,
    plugin_hash TEXT,
    -- The host (lease owner) that ran the attempt.
    owner       TEXT,
    PRIMARY KEY (delivery_id, n)
);

CREATE TABLE version_attempts (
    target      TEXT NOT NULL,
    plugin_hash TEXT NOT NULL,
    attempts    BIGINT NOT NULL,
    PRIMARY KEY (target, plugin_hash)
);

-- Targets paused by hand: no host claims their deliveries.
CREATE TABLE target_state (
    target     TEXT PRIMARY KEY,
    paused     BOOLEAN NOT NULL,
    updated_at BIGINT NOT NULL
);

-- The cluster-wide rate limit of each target: one token bucket, refilled by the database's
-- clock, taken from by every host.
CREATE TABLE rate_buckets (
    target     TEXT PRIMARY KEY,
    tokens     DOUBLE PRECISION NOT NULL,
    updated_at DOUBLE PRECISION NOT NULL
);

-- The hosts serving, with the targets each has loaded, kept fresh by their heartbeat: a target
-- is paused only when no live host has it.
CREATE TABLE cluster_hosts (
    host       TEXT PRIMARY KEY,
    targets    TEXT[] NOT NULL,
    expires_at BIGINT NOT NULL
);
