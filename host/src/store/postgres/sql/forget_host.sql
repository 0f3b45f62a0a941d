DELETE FROM cluster_hosts WHERE host = $1
