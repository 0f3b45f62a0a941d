UPDATE replay_jobs SET status = 'cancelled', updated_at = $2, finished_at = $2
WHERE id = $1 AND status = 'running'
