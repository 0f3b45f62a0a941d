-- Holds target $1's waiting deliveries with reason $2 at $3, only while no live host has the
-- target loaded: a plugin that fails on one host (a rolling deploy) must not hold the work
-- another host delivers.
UPDATE deliveries SET status = 'paused', last_error = $2, updated_at = $3
WHERE target = $1
  AND (status = 'pending' OR (status = 'paused' AND last_error IS DISTINCT FROM $2))
  AND NOT EXISTS (SELECT 1 FROM cluster_hosts
                  WHERE expires_at > $3 AND $1 = ANY(targets))
