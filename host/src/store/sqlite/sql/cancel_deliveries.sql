-- Cancels the deliveries of event ?1 that a cancellation takes (waiting, held, or dead) at ?2;
-- in-flight and other final ones are left alone.
UPDATE deliveries
SET status = 'cancelled', updated_at = ?2
WHERE event_id = ?1 AND status IN ('pending', 'paused', 'dead')
