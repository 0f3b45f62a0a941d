-- One pending delivery of event ?1 to target ?2, due at ?3 (its acceptance).
INSERT INTO deliveries (event_id, target, status, next_attempt_at, ordering_key, updated_at)
VALUES (?1, ?2, 'pending', ?3, ?4, ?3)
