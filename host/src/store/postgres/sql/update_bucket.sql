UPDATE rate_buckets SET tokens = $2, updated_at = updated_at + $3 WHERE target = $1
