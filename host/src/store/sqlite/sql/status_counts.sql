SELECT target, status, COUNT(*) FROM deliveries GROUP BY target, status
