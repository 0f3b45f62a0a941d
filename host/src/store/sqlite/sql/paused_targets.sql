-- The targets paused by hand.
SELECT target FROM target_state WHERE paused = 1 ORDER BY target
