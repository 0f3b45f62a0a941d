-- Holds target ?1's waiting deliveries with reason ?2 at ?3.
UPDATE deliveries SET status = 'paused', last_error = ?2, updated_at = ?3
WHERE target = ?1
  AND (status = 'pending' OR (status = 'paused' AND last_error IS NOT ?2))
