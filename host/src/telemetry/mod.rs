//! Telemetry: what outboxd reports about itself. [`metrics`] holds the Prometheus registry
//! that every module records into with one-line calls; the HTTP API only serves it. Nothing
//! here depends on the API, the dispatcher or the store, so any module may record.

pub mod metrics;
