-- Extends every lease of owner $2 that is still live to at least $1 ms from now, by the
-- database's clock ($3 is NULL; a store on the caller's clock, in tests, passes that time). An
-- expired lease is not revived: it is the sweeper's (or a claim's take-over's) now. Rows
-- locked right now are being settled or taken over: nothing to extend there.
WITH clock AS (SELECT COALESCE($3::bigint, (extract(epoch FROM statement_timestamp()) * 1000)::bigint) AS now)
UPDATE deliveries SET lease_expires_at = GREATEST(lease_expires_at, (SELECT now FROM clock) + $1)
WHERE id IN (SELECT id FROM deliveries
             WHERE lease_owner = $2 AND status = 'in_flight'
               AND lease_expires_at > (SELECT now FROM clock)
             FOR UPDATE SKIP LOCKED)
