UPDATE deliveries SET status = 'paused'
WHERE status = 'pending' AND target NOT IN (SELECT name FROM live_targets)
