-- One pending delivery of event $1[i] to target $2[i], due at $3[i] (its acceptance), with the
-- event's ordering key $4[i]; ids follow the order given (events in the order they came, each
-- event's targets in turn), which the per-key FIFO relies on.
INSERT INTO deliveries (event_id, target, status, next_attempt_at, ordering_key, updated_at)
SELECT r.event_id, r.target, 'pending', r.due, r.ordering_key, r.due
FROM unnest($1::text[], $2::text[], $3::bigint[], $4::text[]) WITH ORDINALITY AS r(event_id, target, due, ordering_key, i)
ORDER BY r.i
