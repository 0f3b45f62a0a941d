-- Gives back delivery ?1, claimed by owner ?2 for attempt ?3 and never started; not due
-- before ?4 when that is later than its due time (NULL: as it was).
UPDATE deliveries
SET status = 'pending', lease_owner = NULL, lease_expires_at = NULL,
    attempts = attempts - 1, attempt_seq = attempt_seq - 1,
    next_attempt_at = MAX(next_attempt_at, COALESCE(?4, next_attempt_at))
WHERE id = ?1 AND lease_owner = ?2 AND attempt_seq = ?3 AND status = 'in_flight'
