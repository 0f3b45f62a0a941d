UPDATE cluster_hosts SET expires_at = $2 WHERE host = $1
