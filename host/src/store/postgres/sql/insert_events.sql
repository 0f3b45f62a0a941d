-- Events $1[i] (type $2[i], payload $3[i], headers $4[i], producer key $5[i], ordering key
-- $6[i], accepted at $7[i], trace context $8[i]).
INSERT INTO events (id, type, payload, headers, idempotency_key, ordering_key, created_at, traceparent)
SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::text[], $6::text[], $7::bigint[], $8::text[])
