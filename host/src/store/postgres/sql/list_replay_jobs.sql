SELECT id, filter, status, after_id, bound_id, failed_before, cap, cursor_id, total, replayed, skipped, error, created_at, updated_at, finished_at FROM replay_jobs ORDER BY id DESC LIMIT $1
