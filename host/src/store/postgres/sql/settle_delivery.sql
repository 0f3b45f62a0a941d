-- Writes an outcome (status $1, due $2, error $3, at $4) on delivery $5 if owner $6 still
-- holds its lease for attempt $7. No row changed: the lease was lost.
UPDATE deliveries
SET status = $1, next_attempt_at = $2, last_error = $3,
    delivered_at = CASE WHEN $1 = 'delivered' THEN $4 ELSE delivered_at END,
    lease_owner = NULL, lease_expires_at = NULL, updated_at = $4
WHERE id = $5 AND lease_owner = $6 AND attempt_seq = $7 AND status = 'in_flight'
