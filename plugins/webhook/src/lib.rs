//! Webhook target: the example outboxd adapter, built with the
//! `outboxd-plugin` SDK.
//!
//! For each event it POSTs a [Standard Webhooks] request to `config.url`:
//!
//! - body: `{"type": <event type>, "timestamp": <RFC 3339 of created-at>,
//!   "data": <payload>}` (see the `body` module);
//! - headers: `content-type: application/json`, `idempotency-key` and
//!   `webhook-id` (both the event's idempotency key), `webhook-timestamp`
//!   (Unix seconds, now), `webhook-signature` when a secret is set (one
//!   `v1,` entry per key, see the `signature` module), and `outboxd-event-id`,
//!   `outboxd-event-type`, `outboxd-attempt`.
//!
//! Configuration: `url` (required), `secret` (optional, `whsec_…`) or
//! `secrets` (a list of them, for a key rotation: every request is signed with
//! each), `timeout_ms` (optional request timeout). The response is classified by
//! [`outboxd_plugin::outcome`]: 2xx delivered; 408, 429, 5xx, timeouts and
//! connection failures retried (honouring `Retry-After` on 429/503); anything
//! else permanent. One line is logged per delivery: at debug when delivered,
//! at info otherwise.
//!
//! The configuration is read once per instance (see [`Settings`]): an instance
//! only ever serves its own target, whose configuration cannot change under it.
//!
//! [Standard Webhooks]: https://www.standardwebhooks.com/

mod body;
mod signature;
mod timestamp;

use std::sync::OnceLock;
use std::time::{SystemTime, UNIX_EPOCH};

use outboxd_plugin::http::Request;
use outboxd_plugin::{DeliveryError, Event, Target, config, log, outcome};

use crate::signature::SigningKey;

/// The webhook target.
struct Webhook;

impl Target for Webhook {
    fn deliver(event: Event) -> Result<(), DeliveryError> {
        let result = send(&event);
        let summary = match &result {
            // Success at debug: the host's metrics count deliveries; a busy log should hold failures.
            Ok(()) => {
                log::debug(format!(
                    "webhook: event {} ({}) attempt {}: delivered",
                    event.id, event.event_type, event.attempt
                ));
                return result;
            }
            Err(DeliveryError::Retry(info)) => format!("will retry: {}", info.reason),
            Err(DeliveryError::Permanent(reason)) => format!("failed permanently: {reason}"),
        };
        log::info(format!(
            "webhook: event {} ({}) attempt {}: {summary}",
            event.id, event.event_type, event.attempt
        ));
        result
    }
}

outboxd_plugin::export_target!(Webhook);

/// The target's configuration, checked: `url`, the signing keys of `secret` or `secrets`,
/// `timeout_ms`.
struct Settings {
    url: String,
    signing_keys: Vec<SigningKey>,
    timeout_ms: Option<u32>,
}

impl Settings {
    /// Reads and checks the configuration; a missing or unusable value is a permanent error.
    fn read() -> Result<Self, DeliveryError> {
        Ok(Self {
            url: config::require("url")?,
            signing_keys: signature::keys(config::get("secret"), config::get("secrets"))
                .map_err(DeliveryError::permanent)?,
            timeout_ms: config::get_as::<u32>("timeout_ms")?,
        })
    }

    /// This instance's settings, read at its first attempt. A configuration that does not
    /// check out is read again at each attempt (each fails the same way, permanently).
    fn get() -> Result<&'static Self, DeliveryError> {
        static SETTINGS: OnceLock<Settings> = OnceLock::new();
        if let Some(settings) = SETTINGS.get() {
            return Ok(settings);
        }
        let settings = Self::read()?;
        Ok(SETTINGS.get_or_init(|| settings))
    }
}

/// Builds, signs and sends the request for `event` and classifies the result.
fn send(event: &Event) -> Result<(), DeliveryError> {
    let settings = Settings::get()?;
    let body = body::render(event)?;
    let webhook_id = event.idempotency_key.as_str();
    let timestamp = unix_seconds_now();

    let mut request = Request::post(settings.url.as_str())
        .header("content-type", "application/json")
        .header("idempotency-key", webhook_id)
        .header("webhook-id", webhook_id)
        .header("webhook-timestamp", timestamp.to_string());
    if !settings.signing_keys.is_empty() {
        request = request.header(
            "webhook-signature",
            signature::sign_all(&settings.signing_keys, webhook_id, timestamp, &body),
        );
    }
    let response = request
        .header("outboxd-event-id", &event.id)
        .header("outboxd-event-type", &event.event_type)
        .header("outboxd-attempt", event.attempt.to_string())
        .body(body)
        .timeout_ms(settings.timeout_ms)
        .send()?;
    outcome::classify_response(&response)
}

/// The current time in whole seconds since the Unix epoch (0 if the host's
/// clock reads earlier).
fn unix_seconds_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |elapsed| elapsed.as_secs())
}
