INSERT INTO outboxd_schema (version, applied_at) VALUES ($1, $2)
