-- Pauses (?2 = 1) or resumes (?2 = 0) target ?1 by hand at ?3.
INSERT INTO target_state (target, paused, updated_at) VALUES (?1, ?2, ?3)
ON CONFLICT (target) DO UPDATE SET paused = excluded.paused, updated_at = excluded.updated_at
