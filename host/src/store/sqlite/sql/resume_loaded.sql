UPDATE deliveries SET status = 'pending'
WHERE status = 'paused' AND target IN (SELECT name FROM live_targets)
