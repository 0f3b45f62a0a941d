-- Takes producer keys $1[i] for events $2[i] at $3[i], in the order given (sorted by key, so
-- that concurrent groups wait on each other's keys in one order and cannot deadlock). Returns
-- the keys taken by this statement: a key already known, or given twice (the first one wins),
-- is not. Of two hosts inserting one key at once, the second waits for the first to commit,
-- then finds it taken.
INSERT INTO idempotency_keys (key, event_id, created_at)
SELECT r.key, r.event_id, r.created_at
FROM unnest($1::text[], $2::text[], $3::bigint[]) WITH ORDINALITY AS r(key, event_id, created_at, i)
ORDER BY r.i
ON CONFLICT (key) DO NOTHING
RETURNING key, event_id
