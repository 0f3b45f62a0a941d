-- Up to ?2 events created before ?1 whose deliveries are all delivered, discarded or
-- cancelled (or that have none), oldest first.
INSERT INTO prune_events (id)
SELECT e.id FROM events e
WHERE e.created_at < ?1
  AND NOT EXISTS (SELECT 1 FROM deliveries d
                  WHERE d.event_id = e.id AND d.status NOT IN ('delivered', 'discarded', 'cancelled'))
ORDER BY e.created_at LIMIT ?2
