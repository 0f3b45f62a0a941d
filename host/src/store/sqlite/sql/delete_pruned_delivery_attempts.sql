DELETE FROM attempts WHERE delivery_id IN (SELECT id FROM prune_deliveries)
