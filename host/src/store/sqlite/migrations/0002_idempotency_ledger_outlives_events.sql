
-- Retention: events are deleted by age, and the idempotency ledger keeps its keys for a
-- window of its own, so a key may outlive its event: the ledger no longer references events.
CREATE TABLE idempotency_keys_v2 (
    key        TEXT PRIMARY KEY,
    event_id   TEXT NOT NULL,
    created_at INTEGER NOT NULL
) STRICT;
INSERT INTO idempotency_keys_v2 (key, event_id, created_at)
    SELECT key, event_id, created_at FROM idempotency_keys;
DROP TABLE idempotency_keys;
ALTER TABLE idempotency_keys_v2 RENAME TO idempotency_keys;
CREATE INDEX idempotency_keys_age ON idempotency_keys (created_at);
CREATE INDEX events_age ON events (created_at);
