-- Claims up to ?5 deliveries of target ?1 that are due at ?4 by the condition in place of
-- /*DUE*/ (due_pending.sql, due_expired.sql), for owner ?2 until ?3, walking the due index in
-- order. An ordered claim puts the per-key FIFO condition in place of its marker.
UPDATE deliveries
SET status = 'in_flight', lease_owner = ?2, lease_expires_at = ?3, attempts = attempts + 1,
    attempt_seq = attempt_seq + 1, updated_at = ?4
WHERE id IN (
    SELECT d.id FROM deliveries d
    WHERE d.target = ?1 AND /*DUE*/
    /*AND FIFO*/
    ORDER BY d.next_attempt_at, d.id
    LIMIT ?5)
RETURNING id, event_id, attempts, attempt_seq, next_attempt_at
