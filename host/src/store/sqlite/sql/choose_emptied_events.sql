-- The events of pruned deliveries that have no delivery left.
INSERT OR IGNORE INTO prune_events (id)
SELECT p.event_id FROM prune_deliveries p
WHERE NOT EXISTS (SELECT 1 FROM deliveries d WHERE d.event_id = p.event_id)
