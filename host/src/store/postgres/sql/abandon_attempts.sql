-- The history rows of abandoned attempts: delivery $1[i], attempt $2[i], started at $3[i],
-- run by $4[i], with error $5. A `running` row left by an older version becomes abandoned;
-- any other row (an outcome already reported) is kept.
INSERT INTO attempts (delivery_id, n, started_at, outcome, error, owner)
SELECT r.id, r.n, r.started_at, 'abandoned', $5, r.owner
FROM unnest($1::bigint[], $2::int[], $3::bigint[], $4::text[]) AS r(id, n, started_at, owner)
ON CONFLICT (delivery_id, n) DO UPDATE SET outcome = excluded.outcome, error = excluded.error
WHERE attempts.outcome = 'running'
