-- Erases, at ?2, the payload and headers (?3, ?4 stand in for them) of up to ?5 events created
-- before ?1 whose deliveries are all delivered, discarded or cancelled (or that have none), and
-- that were not erased before; oldest first.
UPDATE events SET payload = ?3, headers = ?4, erased_at = ?2
WHERE id IN (
    SELECT e.id FROM events e
    WHERE e.created_at < ?1 AND e.erased_at IS NULL
      AND NOT EXISTS (SELECT 1 FROM deliveries d
                      WHERE d.event_id = e.id AND d.status NOT IN ('delivered', 'discarded', 'cancelled'))
    ORDER BY e.created_at LIMIT ?5)
