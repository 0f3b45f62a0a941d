SELECT delivery_id, n::bigint, started_at, duration_ms, outcome, error, plugin_hash,
       response_status::bigint, response_body, detail
FROM attempts WHERE delivery_id = ANY($1) ORDER BY delivery_id, n
