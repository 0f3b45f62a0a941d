-- One pending delivery of event $1[i] to target $2[i], accepted at $3[i] and due at $5[i]
-- (NULL: at $3[i]), with the event's ordering key $4[i]; ids follow the order given (store::layout's:
-- by target and due time, an ordering key's deliveries in the order of their events, which the
-- per-key FIFO relies on).
INSERT INTO deliveries (event_id, target, status, next_attempt_at, ordering_key, updated_at)
SELECT r.event_id, r.target, 'pending', COALESCE(r.due_at, r.accepted), r.ordering_key, r.accepted
FROM unnest($1::text[], $2::text[], $3::bigint[], $4::text[], $5::bigint[])
    WITH ORDINALITY AS r(event_id, target, accepted, ordering_key, due_at, i)
ORDER BY r.i
