SELECT COALESCE(MAX(id), 0)::bigint FROM deliveries
