INSERT INTO events (id, type, payload, headers, idempotency_key, ordering_key, created_at)
VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)
