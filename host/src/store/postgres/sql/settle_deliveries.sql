-- Writes outcomes on deliveries $1[i] (status $3[i], due $4[i], error $5[i], at $6[i]) that
-- owner $7 still holds for attempt $2[i], in id order (the batch comes sorted; the lock order
-- of every transaction that locks several deliveries). Returns the deliveries changed: any
-- other lease was lost.
UPDATE deliveries d
SET status = r.status, next_attempt_at = r.due, last_error = r.error,
    delivered_at = CASE WHEN r.status = 'delivered' THEN r.at ELSE d.delivered_at END,
    lease_owner = NULL, lease_expires_at = NULL, updated_at = r.at
FROM unnest($1::bigint[], $2::int[], $3::text[], $4::bigint[], $5::text[], $6::bigint[])
     AS r(id, n, status, due, error, at)
WHERE d.id = r.id AND d.lease_owner = $7 AND d.attempt_seq = r.n AND d.status = 'in_flight'
RETURNING d.id, d.attempt_seq
