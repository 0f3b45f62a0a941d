-- Returns every delivery owner ?2 holds to pending, due ?1.
UPDATE deliveries SET status = 'pending', lease_owner = NULL, lease_expires_at = NULL,
    next_attempt_at = ?1, updated_at = ?1
WHERE status = 'in_flight' AND lease_owner = ?2
