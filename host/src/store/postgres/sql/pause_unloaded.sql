-- Pauses the pending deliveries of every target no live host (at $1) has loaded.
UPDATE deliveries SET status = 'paused'
WHERE status = 'pending'
  AND target NOT IN (SELECT DISTINCT unnest(targets) FROM cluster_hosts WHERE expires_at > $1)
