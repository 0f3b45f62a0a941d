-- The one history row of a settled attempt, with what the receiver answered (?8, ?9) and what
-- the plugin attached (?10). A row is
-- already there when the attempt was abandoned meanwhile (or, from schema 3 or older, as
-- `running`): what it did replaces it.
INSERT INTO attempts (delivery_id, n, started_at, duration_ms, outcome, error, plugin_hash,
                      response_status, response_body, detail)
VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)
ON CONFLICT (delivery_id, n) DO UPDATE SET outcome = excluded.outcome, error = excluded.error,
    duration_ms = excluded.duration_ms, plugin_hash = excluded.plugin_hash,
    response_status = excluded.response_status, response_body = excluded.response_body,
    detail = excluded.detail
