-- One pending delivery of event $1 to each target of $2, due at $3 (its acceptance).
INSERT INTO deliveries (event_id, target, status, next_attempt_at, ordering_key, updated_at)
SELECT $1, t, 'pending', $3, $4, $3 FROM unnest($2::text[]) AS t
