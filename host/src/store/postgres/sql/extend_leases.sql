-- Extends every lease of owner $2 to at least $1. Rows locked right now are being settled or
-- taken over: nothing to extend there.
UPDATE deliveries SET lease_expires_at = GREATEST(lease_expires_at, $1)
WHERE id IN (SELECT id FROM deliveries WHERE lease_owner = $2 AND status = 'in_flight'
             FOR UPDATE SKIP LOCKED)
