-- Events $1[i] (type $2[i], payload $3[i], headers $4[i], producer key $5[i], ordering key
-- $6[i], accepted at $7[i], trace context $8[i]), and in the same statement one pending delivery
-- of event $9[j] to target $10[j], accepted at $11[j] and due at $13[j] (NULL: at $11[j]), with
-- the event's ordering key $12[j]. Delivery ids follow the order given (store::layout's: by
-- target and due time, an ordering key's deliveries in the order of their events, which the
-- per-key FIFO relies on). The deliveries' foreign key to their events is checked at the end of
-- the statement, when both sets are written: one round trip for both.
WITH written AS (
    INSERT INTO events (id, type, payload, headers, idempotency_key, ordering_key, created_at, traceparent)
    SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::text[], $6::text[], $7::bigint[], $8::text[])
)
INSERT INTO deliveries (event_id, target, status, next_attempt_at, ordering_key, updated_at)
SELECT r.event_id, r.target, 'pending', COALESCE(r.due_at, r.accepted), r.ordering_key, r.accepted
FROM unnest($9::text[], $10::text[], $11::bigint[], $12::text[], $13::bigint[])
    WITH ORDINALITY AS r(event_id, target, accepted, ordering_key, due_at, i)
ORDER BY r.i
