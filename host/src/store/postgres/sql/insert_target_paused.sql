-- Pauses target $1 at $2, if it has no row yet.
INSERT INTO target_state (target, paused, updated_at) VALUES ($1, TRUE, $2)
ON CONFLICT (target) DO NOTHING
