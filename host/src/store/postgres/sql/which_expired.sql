-- Leases expired at $3, whatever their target (the sweeper).
AND lease_expires_at <= $3
