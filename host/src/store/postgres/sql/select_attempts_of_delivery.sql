SELECT n::bigint, started_at, duration_ms, outcome, error, plugin_hash,
       response_status::bigint, response_body, detail
FROM attempts WHERE delivery_id = $1 ORDER BY n
