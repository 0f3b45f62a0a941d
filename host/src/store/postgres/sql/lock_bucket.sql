-- Target $1's tokens and the seconds since its last refill, by the database's clock (every
-- host refills the bucket by the same time), locked until the transaction ends.
SELECT tokens, GREATEST(extract(epoch FROM clock_timestamp())::float8 - updated_at, 0)
FROM rate_buckets WHERE target = $1 FOR UPDATE
