//! {{name}}: an outboxd target plugin (world `{{world}}`). It POSTs each event's payload to
//! `config.url` and tells outboxd how that went. The decisions are plain functions in
//! `mapping` (unit-tested natively with `cargo test`); this file connects them to the host.

mod bindings {
    wit_bindgen::generate!({ path: "wit", world: "{{world}}" });
}
pub mod mapping;

use bindings::outboxd::target::types::{DeliveryError, Event, RetryInfo};
use bindings::outboxd::target::{config, http, log};
use mapping::Failure;

struct Plugin;

{{export}}
/// One event: build the request, send it through the host, classify the answer.
fn deliver_one(event: &Event) -> Result<(), Failure> {
    let url = config::get("url").ok_or_else(|| Failure::Permanent("missing required config key `url`".into()))?;
    let out = mapping::request(&url, &event.event_type, &event.idempotency_key, &event.payload);
    let request = http::Request {
        method: out.method.into(),
        url: out.url,
        headers: out.headers,
        body: out.body,
        timeout_ms: None,
    };
    let response = http::send(&request).map_err(|e| match e {
        http::Error::Denied(text) => mapping::http_error("denied", &text),
        http::Error::Timeout => mapping::http_error("timeout", ""),
        http::Error::Connect(text) => mapping::http_error("connect", &text),
        http::Error::Other(text) => mapping::http_error("other", &text),
    })?;
    log::log(
        log::Level::Info,
        &format!("{{name}}: event {} attempt {}: HTTP {}", event.id, event.attempt, response.status),
    );
    mapping::classify(response.status, &response.headers, &response.body)
}

fn into_wit(failure: Failure) -> DeliveryError {
    match failure {
        Failure::Retry { reason, after_ms } => DeliveryError::Retry(RetryInfo { reason, after_ms }),
        Failure::Permanent(reason) => DeliveryError::Permanent(reason),
    }
}

bindings::export!(Plugin with_types_in bindings);
