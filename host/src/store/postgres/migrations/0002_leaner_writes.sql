-- Fewer writes per delivery (docs/performance.md, issue 22).
--
-- Every query by lease owner (heartbeat, release, settle) also says `status = 'in_flight'`,
-- which the partial `deliveries_expiry` index covers (it holds only the deliveries in flight,
-- a few per attempt slot of each host). The `(lease_owner)` index cost an index entry, and
-- its WAL, at every claim.
DROP INDEX deliveries_lease;

-- The foreign keys from deliveries to events and from attempts to deliveries ran a lookup of
-- the parent row and locked it (a WAL record) for every delivery ingested and every attempt
-- settled: about 8 µs of the server's CPU per row. The store writes a delivery only with its
-- event, in one transaction, and deletes the children before the parent (retention, prune);
-- a late outcome of a delivery pruned meanwhile leaves a history row rather than failing its
-- settle batch. Nothing else writes these tables.
ALTER TABLE deliveries DROP CONSTRAINT IF EXISTS deliveries_event_id_fkey;
ALTER TABLE attempts DROP CONSTRAINT IF EXISTS attempts_delivery_id_fkey;
