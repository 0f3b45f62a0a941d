-- Of events $1, those left with no delivery.
SELECT DISTINCT e FROM unnest($1::text[]) AS e
WHERE NOT EXISTS (SELECT 1 FROM deliveries d WHERE d.event_id = e)
