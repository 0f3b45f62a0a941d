-- One pending delivery of event ?1 to target ?2, accepted at ?3, due then or at ?5 (a
-- scheduled event's time) if later.
INSERT INTO deliveries (event_id, target, status, next_attempt_at, ordering_key, updated_at)
VALUES (?1, ?2, 'pending', MAX(?3, IFNULL(?5, ?3)), ?4, ?3)
