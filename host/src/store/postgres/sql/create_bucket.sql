-- Target $1's token bucket, full ($2 tokens), if it has none yet.
INSERT INTO rate_buckets (target, tokens, updated_at)
VALUES ($1, $2, extract(epoch FROM clock_timestamp()))
ON CONFLICT (target) DO NOTHING
