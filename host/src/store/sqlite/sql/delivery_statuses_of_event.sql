-- The target and status of each delivery of event ?1, by target.
SELECT target, status FROM deliveries WHERE event_id = ?1 ORDER BY target
