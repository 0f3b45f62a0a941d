-- OpenTelemetry (issue 25, point 2): the W3C `traceparent` an event was accepted under (the
-- producer's, or outboxd's ingest span when it exports traces), so that every attempt and
-- outbound request of its deliveries joins that trace. NULL: the event carries no trace.
ALTER TABLE events ADD COLUMN traceparent TEXT;
