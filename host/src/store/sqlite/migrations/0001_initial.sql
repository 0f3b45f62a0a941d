
CREATE TABLE events (
    id              TEXT PRIMARY KEY,
    type            TEXT NOT NULL,
    payload         TEXT NOT NULL,
    headers         TEXT NOT NULL,
    idempotency_key TEXT,
    ordering_key    TEXT,
    created_at      INTEGER NOT NULL
) STRICT;

-- The producer idempotency ledger: a key resolves to the first event accepted with it.
CREATE TABLE idempotency_keys (
    key        TEXT PRIMARY KEY,
    event_id   TEXT NOT NULL REFERENCES events(id),
    created_at INTEGER NOT NULL
) STRICT;

CREATE TABLE deliveries (
    id               INTEGER PRIMARY KEY,
    event_id         TEXT NOT NULL REFERENCES events(id),
    target           TEXT NOT NULL,
    status           TEXT NOT NULL
                     CHECK (status IN ('pending', 'in_flight', 'delivered', 'dead', 'discarded', 'paused')),
    -- attempts counts towards the retry budget (a replay resets it); attempt_seq numbers
    -- the history and never goes back.
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
CREATE INDEX deliveries_due ON deliveries (target, status, next_attempt_at);
CREATE INDEX deliveries_lease ON deliveries (lease_owner) WHERE lease_owner IS NOT NULL;
CREATE INDEX deliveries_expiry ON deliveries (lease_expires_at) WHERE status = 'in_flight';
CREATE INDEX deliveries_order ON deliveries (target, ordering_key, id) WHERE ordering_key IS NOT NULL;
CREATE INDEX deliveries_failed ON deliveries (status, updated_at) WHERE status IN ('dead', 'discarded');

CREATE TABLE attempts (
    delivery_id INTEGER NOT NULL REFERENCES deliveries(id),
    n           INTEGER NOT NULL,
    started_at  INTEGER NOT NULL,
    duration_ms INTEGER,
    outcome     TEXT NOT NULL CHECK (outcome IN ('running', 'delivered', 'retry', 'permanent', 'abandoned')),
    error       TEXT,
    plugin_hash TEXT,
    PRIMARY KEY (delivery_id, n)
) STRICT;

-- Attempts per plugin version of each target, kept up by settle.
CREATE TABLE version_attempts (
    target      TEXT NOT NULL,
    plugin_hash TEXT NOT NULL,
    attempts    INTEGER NOT NULL,
    PRIMARY KEY (target, plugin_hash)
) STRICT;

-- Targets paused by hand: their lanes claim nothing.
CREATE TABLE target_state (
    target     TEXT PRIMARY KEY,
    paused     INTEGER NOT NULL,
    updated_at INTEGER NOT NULL
) STRICT;
