UPDATE deliveries SET lease_expires_at = MAX(lease_expires_at, ?1)
WHERE lease_owner = ?2 AND status = 'in_flight'
