UPDATE replay_jobs
SET cursor_id = $2, replayed = replayed + $3, skipped = skipped + $4, status = $5, updated_at = $6,
    finished_at = CASE WHEN $5 = 'running' THEN NULL ELSE $6 END
WHERE id = $1 AND status = 'running'
