//! Marker target: a test fixture for hot reload, built twice from this one
//! source as `marker-v1` (version 1.0.0) and `marker-v2` (version 2.0.0).
//!
//! For each event it POSTs the payload to `config.url` with the headers
//! `content-type: application/json`, `idempotency-key` (the event's key),
//! `outboxd-event-id`, `outboxd-attempt` and `x-plugin-version` (the
//! version of the crate it was built as), so a receiver can tell which
//! version of the plugin served each request. The response is classified the
//! standard way ([`outboxd_plugin::outcome`]).

use outboxd_plugin::http::Request;
use outboxd_plugin::{DeliveryError, Event, Target, config, outcome};

/// The version this component was built as, sent in `x-plugin-version`.
const VERSION: &str = env!("CARGO_PKG_VERSION");

/// The marker target.
struct Marker;

impl Target for Marker {
    fn deliver(event: Event) -> Result<(), DeliveryError> {
        let url = config::require("url")?;
        let response = Request::post(url)
            .header("content-type", "application/json")
            .header("idempotency-key", &event.idempotency_key)
            .header("outboxd-event-id", &event.id)
            .header("outboxd-attempt", event.attempt.to_string())
            .header("x-plugin-version", VERSION)
            .body(event.payload)
            .send()?;
        outcome::classify_response(&response)
    }
}

outboxd_plugin::export_target!(Marker);
