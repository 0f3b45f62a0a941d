-- What the adapter itself attached to each attempt (`report.detail`, contract 0.1.1): at most a
-- KiB of text, marked when cut. NULL when it attached nothing, and for older attempts.
ALTER TABLE attempts ADD COLUMN detail TEXT;
