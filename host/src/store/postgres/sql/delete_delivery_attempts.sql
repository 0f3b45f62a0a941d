DELETE FROM attempts WHERE delivery_id = ANY($1)
