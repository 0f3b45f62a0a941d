-- The target and status of each delivery of the events $1 (a search's page), by event and target.
SELECT event_id, target, status FROM deliveries WHERE event_id = ANY($1) ORDER BY event_id, target
