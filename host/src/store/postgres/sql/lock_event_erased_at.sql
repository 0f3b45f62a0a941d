-- When event $1's payload was erased (NULL: it was not), the event locked until the end of the
-- transaction.
SELECT erased_at FROM events WHERE id = $1 FOR UPDATE
