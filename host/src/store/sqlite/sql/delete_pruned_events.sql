DELETE FROM events WHERE id IN (SELECT id FROM prune_events)
