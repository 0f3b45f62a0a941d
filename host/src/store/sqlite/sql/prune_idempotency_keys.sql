-- Forgets up to ?2 producer keys recorded before ?1, oldest first.
DELETE FROM idempotency_keys WHERE rowid IN
    (SELECT rowid FROM idempotency_keys WHERE created_at < ?1 ORDER BY created_at LIMIT ?2)
