-- Returns up to $2 in-flight deliveries, chosen by the condition in place of /*AND WHICH*/
-- (which_*.sql; none: every one), to pending, due at /*DUE*/ (`$1`, now; a claim's take-over:
-- `LEAST(d.next_attempt_at, $1)`, keeping their place), skipping rows another transaction
-- holds (being settled or claimed right now). Returns each one's attempt: number, claim time,
-- owner.
WITH chosen AS MATERIALIZED (
    SELECT id, attempt_seq, updated_at, lease_owner FROM deliveries
    WHERE status = 'in_flight' /*AND WHICH*/
    ORDER BY id LIMIT $2
    FOR UPDATE SKIP LOCKED)
UPDATE deliveries d
SET status = 'pending', lease_owner = NULL, lease_expires_at = NULL,
    next_attempt_at = /*DUE*/, updated_at = $1
FROM chosen c WHERE d.id = c.id
RETURNING d.id, c.attempt_seq, c.updated_at, c.lease_owner
