-- Host $1 serves with targets $2 loaded, until $3 unless refreshed.
INSERT INTO cluster_hosts (host, targets, expires_at) VALUES ($1, $2, $3)
ON CONFLICT (host) DO UPDATE SET targets = excluded.targets,
    expires_at = GREATEST(cluster_hosts.expires_at, excluded.expires_at)
