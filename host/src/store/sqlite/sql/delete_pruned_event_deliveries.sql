DELETE FROM deliveries WHERE event_id IN (SELECT id FROM prune_events)
