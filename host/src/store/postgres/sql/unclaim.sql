-- Gives back the deliveries $1[i], claimed by owner $3 for attempt $2[i] and never started; not
-- due before $4 when that is later than their due time (NULL: as they were).
UPDATE deliveries d
SET status = 'pending', lease_owner = NULL, lease_expires_at = NULL,
    attempts = d.attempts - 1, attempt_seq = d.attempt_seq - 1,
    next_attempt_at = GREATEST(d.next_attempt_at, COALESCE($4, d.next_attempt_at))
FROM unnest($1::bigint[], $2::int[]) AS r(id, n)
WHERE d.id = r.id AND d.attempt_seq = r.n AND d.lease_owner = $3 AND d.status = 'in_flight'
