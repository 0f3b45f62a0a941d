-- Bulk replay as a job (issue 25, point 4): a replay over a filter is a row here, worked in
-- chunks by `serve` (or the CLI that started it). `bound_id` and `failed_before` fix what it
-- takes when it is created; `cursor_id` is the last delivery id a committed chunk reached, and
-- the chunk's replay and the advance of `cursor_id` and the counts commit together.
CREATE TABLE replay_jobs (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    filter TEXT NOT NULL,
    status TEXT NOT NULL CHECK (status IN ('running', 'done', 'cancelled', 'failed')),
    after_id INTEGER NOT NULL,
    bound_id INTEGER NOT NULL,
    failed_before INTEGER NOT NULL,
    cap INTEGER,
    cursor_id INTEGER NOT NULL,
    total INTEGER NOT NULL,
    replayed INTEGER NOT NULL DEFAULT 0,
    skipped INTEGER NOT NULL DEFAULT 0,
    error TEXT,
    created_at INTEGER NOT NULL,
    updated_at INTEGER NOT NULL,
    finished_at INTEGER
) STRICT;
CREATE INDEX replay_jobs_running ON replay_jobs (id) WHERE status = 'running';
