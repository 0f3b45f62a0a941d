-- Resumes the paused deliveries of every target a live host (at $1) has loaded.
UPDATE deliveries SET status = 'pending'
WHERE status = 'paused'
  AND target IN (SELECT DISTINCT unnest(targets) FROM cluster_hosts WHERE expires_at > $1)
