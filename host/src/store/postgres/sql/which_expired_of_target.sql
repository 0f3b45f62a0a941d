-- Leases of target $3 expired at $4 (a claim takes them over).
AND target = $3 AND lease_expires_at <= $4
