SELECT target FROM target_state WHERE paused ORDER BY target
