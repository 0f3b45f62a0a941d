DELETE FROM live_targets
