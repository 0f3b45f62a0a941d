-- Pauses ($2 true) or resumes target $1 at $3, if that changes anything.
UPDATE target_state SET paused = $2, updated_at = $3 WHERE target = $1 AND paused <> $2
