SELECT n, started_at, duration_ms, outcome, error, plugin_hash
FROM attempts WHERE delivery_id = ?1 ORDER BY n
