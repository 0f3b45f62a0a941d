-- A delivery may be cancelled (issue 27): a new final status.
ALTER TABLE deliveries DROP CONSTRAINT deliveries_status_check;
ALTER TABLE deliveries ADD CONSTRAINT deliveries_status_check
    CHECK (status IN ('pending', 'in_flight', 'delivered', 'dead', 'discarded', 'paused', 'cancelled'));
