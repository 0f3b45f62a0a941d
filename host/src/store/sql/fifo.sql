-- The per-key FIFO condition of an ordered claim over `deliveries d`, the same for both
-- backends: a delivery with an ordering key is a candidate only when no earlier delivery of
-- its key to the target is waiting, in flight or paused (a cancelled one is final, as are
-- delivered and failed ones). "Earlier" is the id order, the order of acceptance.
AND (d.ordering_key IS NULL OR NOT EXISTS (
    SELECT 1 FROM deliveries e
    WHERE e.target = d.target AND e.ordering_key = d.ordering_key AND e.id < d.id
      AND e.status IN ('pending', 'in_flight', 'paused')))
