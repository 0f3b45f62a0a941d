-- Whether target $1 is paused by hand (no row: it never was).
SELECT paused FROM target_state WHERE target = $1
