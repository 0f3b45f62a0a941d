-- Takes over up to ?5 in-flight deliveries of target ?1 whose lease expired at ?4, for owner
-- ?2 until ?3. An ordered claim puts the per-key FIFO condition in place of the marker.
UPDATE deliveries
SET status = 'in_flight', lease_owner = ?2, lease_expires_at = ?3, attempts = attempts + 1,
    attempt_seq = attempt_seq + 1, updated_at = ?4
WHERE id IN (
    SELECT d.id FROM deliveries d
    WHERE d.target = ?1 AND d.status = 'in_flight' AND d.lease_expires_at <= ?4
    /*AND FIFO*/
    ORDER BY d.next_attempt_at, d.id
    LIMIT ?5)
RETURNING id, event_id, attempts, attempt_seq
