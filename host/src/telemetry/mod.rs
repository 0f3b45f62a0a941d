//! Telemetry: what outboxd reports about itself. [`metrics`] holds the Prometheus registry
//! that every module records into with one-line calls; the HTTP API only serves it.
//! [`history`] keeps the last hours per target in one-minute buckets for the dashboard's charts.
//! [`traces`] makes the spans of ingest, relay, attempts and their outbound requests and
//! exports them over OTLP when the standard `OTEL_*` variables ask for it; [`trace_context`]
//! is the W3C `traceparent` an event carries from its producer to its receivers. Nothing
//! here depends on the API, the dispatcher or the store, so any module may record.

pub mod history;
pub mod metrics;
pub mod trace_context;
pub mod traces;
