-- When event ?1's payload was erased (NULL: it was not).
SELECT erased_at FROM events WHERE id = ?1
