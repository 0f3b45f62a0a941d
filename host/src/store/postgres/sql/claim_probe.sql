-- Before a claim of target $1 at $2: whether the target is paused by hand (then nothing is
-- claimed), and whether any lease of it has expired (then the claim takes those over first,
-- in a transaction; otherwise the claim is one statement).
SELECT EXISTS (SELECT 1 FROM target_state WHERE target = $1 AND paused),
       EXISTS (SELECT 1 FROM deliveries
               WHERE status = 'in_flight' AND lease_expires_at <= $2 AND target = $1)
