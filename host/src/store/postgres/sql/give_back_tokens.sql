UPDATE rate_buckets SET tokens = LEAST(tokens + $2, $3) WHERE target = $1
