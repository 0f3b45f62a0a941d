SELECT id, type, payload, headers, idempotency_key, ordering_key, created_at FROM events WHERE id = ?1
