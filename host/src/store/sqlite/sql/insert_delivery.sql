-- One pending delivery of event ?1 to target ?2, accepted at ?3, due at ?5 (NULL: at ?3).
INSERT INTO deliveries (event_id, target, status, next_attempt_at, ordering_key, updated_at)
VALUES (?1, ?2, 'pending', IFNULL(?5, ?3), ?4, ?3)
