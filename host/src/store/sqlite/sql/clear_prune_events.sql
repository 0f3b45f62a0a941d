DELETE FROM prune_events
