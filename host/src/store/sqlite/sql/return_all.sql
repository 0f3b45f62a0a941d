-- Returns every in-flight delivery to pending, due ?1.
UPDATE deliveries SET status = 'pending', lease_owner = NULL, lease_expires_at = NULL,
    next_attempt_at = ?1, updated_at = ?1
WHERE status = 'in_flight'
