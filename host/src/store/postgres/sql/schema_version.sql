SELECT COALESCE(MAX(version), 0) FROM outboxd_schema
