//! Telemetry: what outboxd reports about itself. [`metrics`] holds the Prometheus registry
//! that every module records into with one-line calls; the HTTP API only serves it.
//! [`history`] keeps the last hours per target in one-minute buckets for the dashboard's charts. Nothing
//! here depends on the API, the dispatcher or the store, so any module may record.

pub mod history;
pub mod metrics;
