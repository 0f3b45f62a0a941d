SELECT target, MIN(next_attempt_at) FROM deliveries
WHERE status = 'pending' AND next_attempt_at <= ?1 GROUP BY target
