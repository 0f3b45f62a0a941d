-- Extends every lease of owner ?2 still live at ?3 to at least ?1. An expired lease is not
-- revived: it is the sweeper's (or a claim's take-over's) now.
UPDATE deliveries SET lease_expires_at = MAX(lease_expires_at, ?1)
WHERE lease_owner = ?2 AND status = 'in_flight' AND lease_expires_at > ?3
