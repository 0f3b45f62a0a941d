-- Before a claim of target $1: whether the target is paused by hand (then nothing is claimed),
-- and whether any lease of it has expired (then the claim takes those over first, in a
-- transaction; otherwise the claim is one statement). Leases expire by the database's clock
-- ($2 is NULL; a store on the caller's clock, in tests, passes that time).
SELECT EXISTS (SELECT 1 FROM target_state WHERE target = $1 AND paused),
       EXISTS (SELECT 1 FROM deliveries
               WHERE status = 'in_flight' AND target = $1
                 AND lease_expires_at <= COALESCE($2::bigint, (extract(epoch FROM statement_timestamp()) * 1000)::bigint))
