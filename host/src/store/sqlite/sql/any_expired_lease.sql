-- Whether target ?1 has an in-flight delivery whose lease expired at ?2: one probe of the
-- target's few in-flight rows decides whether a claim looks at them at all.
SELECT EXISTS (SELECT 1 FROM deliveries
               WHERE target = ?1 AND status = 'in_flight' AND lease_expires_at <= ?2)
