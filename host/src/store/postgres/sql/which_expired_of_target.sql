-- Leases of target $3 expired by the database's clock ($4 is NULL; a store on the caller's
-- clock, in tests, passes that time): a claim takes them over.
AND target = $3 AND lease_expires_at <= COALESCE($4::bigint, (extract(epoch FROM statement_timestamp()) * 1000)::bigint)
