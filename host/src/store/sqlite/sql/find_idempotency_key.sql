-- The event first accepted with producer key ?1.
SELECT event_id FROM idempotency_keys WHERE key = ?1
