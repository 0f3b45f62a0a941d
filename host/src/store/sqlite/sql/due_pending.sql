-- A claim's due deliveries: pending, their time come.
d.status = 'pending' AND d.next_attempt_at <= ?4
