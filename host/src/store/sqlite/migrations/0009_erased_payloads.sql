-- An event's payload and headers may be erased once its deliveries are final (issue 27): the
-- event row, its deliveries, their history and the producer key stay; `erased_at` says when.
ALTER TABLE events ADD COLUMN erased_at INTEGER;
