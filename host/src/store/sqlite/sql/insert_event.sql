INSERT INTO events (id, type, payload, headers, idempotency_key, ordering_key, created_at, traceparent)
VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)
