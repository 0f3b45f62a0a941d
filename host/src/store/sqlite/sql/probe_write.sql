INSERT INTO readiness_probe (id, probed_at) VALUES (1, ?1)
ON CONFLICT (id) DO UPDATE SET probed_at = excluded.probed_at
