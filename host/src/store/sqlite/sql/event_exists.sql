-- Whether event ?1 is stored.
SELECT 1 FROM events WHERE id = ?1
