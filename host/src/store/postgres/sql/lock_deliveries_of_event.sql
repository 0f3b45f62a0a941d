-- The target and status of each delivery of event $1, by target, locked until the end of the
-- transaction (a settle of one in flight waits, so the statuses read are the ones changed).
SELECT target, status FROM deliveries WHERE event_id = $1 ORDER BY target FOR UPDATE
