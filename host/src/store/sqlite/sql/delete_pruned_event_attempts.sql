DELETE FROM attempts WHERE delivery_id IN
    (SELECT d.id FROM deliveries d JOIN prune_events p ON d.event_id = p.id)
