-- The first event of each of the producer keys $1.
SELECT key, event_id FROM idempotency_keys WHERE key = ANY($1::text[])
