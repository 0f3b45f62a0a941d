-- The earliest due time of target ?1's pending deliveries; none while the target is paused by
-- hand (nothing of it is due then: its lanes sleep until a wake-up, such as its resumption).
SELECT MIN(next_attempt_at) FROM deliveries
WHERE target = ?1 AND status = 'pending'
  AND NOT EXISTS (SELECT 1 FROM target_state WHERE target = ?1 AND paused)
