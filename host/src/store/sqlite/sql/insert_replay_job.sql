INSERT INTO replay_jobs (filter, status, after_id, bound_id, failed_before, cap, cursor_id, total, created_at, updated_at)
VALUES (?1, 'running', ?2, ?3, ?4, ?5, ?2, ?6, ?4, ?4)
RETURNING id, filter, status, after_id, bound_id, failed_before, cap, cursor_id, total, replayed, skipped, error, created_at, updated_at, finished_at
