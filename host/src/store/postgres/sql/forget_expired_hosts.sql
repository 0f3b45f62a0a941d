DELETE FROM cluster_hosts WHERE expires_at <= $1
