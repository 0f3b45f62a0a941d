-- Takes producer key $1 for event $2 at $3; no row inserted: the key was taken. Of two hosts
-- inserting one key at once, the second waits for the first to commit, then finds it taken.
INSERT INTO idempotency_keys (key, event_id, created_at) VALUES ($1, $2, $3)
ON CONFLICT (key) DO NOTHING
