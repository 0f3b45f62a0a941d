SELECT MIN(next_attempt_at) FROM deliveries WHERE target = $1 AND status = 'pending'
