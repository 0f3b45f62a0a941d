-- Each status from its own partial index (deliveries_due, deliveries_expiry, deliveries_paused):
-- the cost follows the backlog, not the whole table.
SELECT target, COUNT(*) FROM deliveries WHERE status = 'pending' GROUP BY target
UNION ALL
SELECT target, COUNT(*) FROM deliveries WHERE status = 'in_flight' GROUP BY target
UNION ALL
SELECT target, COUNT(*) FROM deliveries WHERE status = 'paused' GROUP BY target
