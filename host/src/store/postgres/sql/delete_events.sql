DELETE FROM events WHERE id = ANY($1)
