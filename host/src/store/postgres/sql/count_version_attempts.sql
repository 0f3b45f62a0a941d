-- Adds $3[i] attempts to the counter of target $1[i] and plugin version $2[i] (each pair once,
-- in key order: these rows are shared by every host).
INSERT INTO version_attempts (target, plugin_hash, attempts)
SELECT * FROM unnest($1::text[], $2::text[], $3::bigint[])
ON CONFLICT (target, plugin_hash) DO UPDATE SET attempts = version_attempts.attempts + excluded.attempts
