DELETE FROM deliveries WHERE event_id = ANY($1)
