INSERT OR IGNORE INTO live_targets (name) VALUES (?1)
