INSERT INTO idempotency_keys (key, event_id, created_at) VALUES (?1, ?2, ?3)
