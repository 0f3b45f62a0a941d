-- Erases event $1's payload and headers at $2 ($3 and $4 are what stands in for them), unless
-- it was erased before.
UPDATE events SET payload = $3, headers = $4, erased_at = $2 WHERE id = $1 AND erased_at IS NULL
