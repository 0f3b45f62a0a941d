SELECT id, type, payload, headers, idempotency_key, ordering_key, created_at, traceparent FROM events WHERE id = $1
