SELECT id, target, status, attempts, last_error, next_attempt_at, delivered_at, attempt_seq, updated_at
FROM deliveries WHERE event_id = ?1 ORDER BY target
