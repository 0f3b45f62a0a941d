-- Leases expired by the database's clock ($3 is NULL; a store on the caller's clock, in
-- tests, passes that time), whatever their target (the sweeper).
AND lease_expires_at <= COALESCE($3::bigint, (extract(epoch FROM statement_timestamp()) * 1000)::bigint)
