-- Claims up to $3 pending deliveries of target $1 due at $2, for owner $4 for $5 ms from the
-- database's clock ($6 is NULL; a store on the caller's clock, in tests, passes that time),
-- unless the target is paused by hand, and returns each with its event. The candidates are materialised
-- (locked, LIMIT applied after SKIP LOCKED) before the update, so that the planner cannot run
-- the subquery again per row and claim more than the limit. An ordered claim puts the per-key
-- FIFO condition in place of the marker.
WITH candidates AS MATERIALIZED (
    SELECT d.id FROM deliveries d
    WHERE d.target = $1 AND d.status = 'pending' AND d.next_attempt_at <= $2
    /*AND FIFO*/
      AND NOT EXISTS (SELECT 1 FROM target_state t WHERE t.target = $1 AND t.paused)
    ORDER BY d.next_attempt_at, d.id
    LIMIT $3
    FOR UPDATE OF d SKIP LOCKED)
UPDATE deliveries d
SET status = 'in_flight', lease_owner = $4,
    lease_expires_at = COALESCE($6::bigint, (extract(epoch FROM statement_timestamp()) * 1000)::bigint) + $5, attempts = d.attempts + 1,
    attempt_seq = d.attempt_seq + 1, updated_at = $2
FROM candidates c, events e
WHERE d.id = c.id AND e.id = d.event_id
RETURNING d.id, d.attempts, d.attempt_seq,
          e.id, e.type, e.payload, e.headers, e.idempotency_key, e.ordering_key, e.created_at, e.traceparent, d.next_attempt_at
