UPDATE replay_jobs SET status = 'failed', error = $2, updated_at = $3, finished_at = $3
WHERE id = $1 AND status = 'running'
