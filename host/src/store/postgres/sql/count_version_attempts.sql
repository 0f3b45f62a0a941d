INSERT INTO version_attempts (target, plugin_hash, attempts) VALUES ($1, $2, $3)
ON CONFLICT (target, plugin_hash) DO UPDATE SET attempts = version_attempts.attempts + $3
