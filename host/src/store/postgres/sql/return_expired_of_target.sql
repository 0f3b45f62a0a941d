-- Returns up to $2 in-flight deliveries of target $3 whose lease expired at $4 to pending at $1,
-- keeping their place in the queue (the claim that found them takes them over), skipping rows
-- another transaction holds. Returns each one's attempt: number, claim time, owner.
WITH chosen AS MATERIALIZED (
    SELECT id, attempt_seq, updated_at, lease_owner FROM deliveries
    WHERE status = 'in_flight' AND target = $3 AND lease_expires_at <= $4
    ORDER BY id LIMIT $2
    FOR UPDATE SKIP LOCKED)
UPDATE deliveries d
SET status = 'pending', lease_owner = NULL, lease_expires_at = NULL,
    next_attempt_at = LEAST(d.next_attempt_at, $1), updated_at = $1
FROM chosen c WHERE d.id = c.id
RETURNING d.id, c.attempt_seq, c.updated_at, c.lease_owner
