DELETE FROM deliveries WHERE id IN (SELECT id FROM prune_deliveries)
