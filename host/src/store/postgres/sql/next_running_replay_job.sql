-- The oldest running job that no other host is working: its row stays locked until the
-- chunk commits, so one host at a time works a job, and a cancellation waits for the chunk.
SELECT id, filter, status, after_id, bound_id, failed_before, cap, cursor_id, total, replayed, skipped, error, created_at, updated_at, finished_at FROM replay_jobs WHERE status = 'running' AND ($1::bigint IS NULL OR id = $1) ORDER BY id LIMIT 1 FOR UPDATE SKIP LOCKED
