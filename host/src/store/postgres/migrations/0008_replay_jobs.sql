-- Bulk replay as a job (issue 25, point 4): a replay over a filter is a row here, worked in
-- chunks by one host at a time (the chunk's transaction holds the row, `FOR UPDATE SKIP
-- LOCKED`). `bound_id` and `failed_before` fix what it takes when it is created; `cursor_id`
-- is the last delivery id a committed chunk reached, and the chunk's replay and the advance of
-- `cursor_id` and the counts commit together.
CREATE TABLE replay_jobs (
    id BIGSERIAL PRIMARY KEY,
    filter TEXT NOT NULL,
    status TEXT NOT NULL CHECK (status IN ('running', 'done', 'cancelled', 'failed')),
    after_id BIGINT NOT NULL,
    bound_id BIGINT NOT NULL,
    failed_before BIGINT NOT NULL,
    cap BIGINT,
    cursor_id BIGINT NOT NULL,
    total BIGINT NOT NULL,
    replayed BIGINT NOT NULL DEFAULT 0,
    skipped BIGINT NOT NULL DEFAULT 0,
    error TEXT,
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL,
    finished_at BIGINT
);
CREATE INDEX replay_jobs_running ON replay_jobs (id) WHERE status = 'running';
