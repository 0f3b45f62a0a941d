-- The one history row of each settled attempt, run by owner $8, with what the receiver
-- answered ($9[i], $10[i]) and what the plugin attached ($11[i]). A row is already there when the attempt was abandoned meanwhile
-- (or, from an older version, as `running`): what the attempt did replaces it.
INSERT INTO attempts (delivery_id, n, started_at, duration_ms, outcome, error, plugin_hash, owner,
                      response_status, response_body, detail)
SELECT r.id, r.n, r.started_at, r.duration_ms, r.outcome, r.error, r.plugin_hash, $8,
       r.response_status, r.response_body, r.detail
FROM unnest($1::bigint[], $2::int[], $3::bigint[], $4::bigint[], $5::text[], $6::text[], $7::text[],
            $9::int[], $10::text[], $11::text[])
     AS r(id, n, started_at, duration_ms, outcome, error, plugin_hash, response_status, response_body,
          detail)
ON CONFLICT (delivery_id, n) DO UPDATE SET outcome = excluded.outcome, error = excluded.error,
    duration_ms = excluded.duration_ms, plugin_hash = excluded.plugin_hash, owner = excluded.owner,
    response_status = excluded.response_status, response_body = excluded.response_body,
    detail = excluded.detail
