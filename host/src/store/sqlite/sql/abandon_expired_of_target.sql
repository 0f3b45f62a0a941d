-- Writes the history row of the running attempt of every in-flight delivery of target ?2 whose lease expired at ?3 as abandoned, with error ?1.
-- The attempt started when it was claimed (`updated_at`); a `running` row left by schema 3
-- or older becomes abandoned, any other row is kept.
INSERT INTO attempts (delivery_id, n, started_at, outcome, error)
SELECT id, attempt_seq, updated_at, 'abandoned', ?1 FROM deliveries
WHERE status = 'in_flight' AND target = ?2 AND lease_expires_at <= ?3
ON CONFLICT (delivery_id, n) DO UPDATE SET outcome = excluded.outcome, error = excluded.error
WHERE outcome = 'running'
