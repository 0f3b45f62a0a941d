//! slack-notify: posts a Slack incoming-webhook message for each event.
//!
//! Every event becomes one `POST` of `{"text": "<event type>: <summary>", "blocks": [...]}` to
//! `config.webhook_url`, with the event's idempotency key as the `idempotency-key` header.
//! `order.*` events are summarised as `order <id> by <customer.email> — <total>`; any other event
//! (and an order without an id) by the first 200 characters of its payload.
//!
//! Config (`[config]` of the manifest):
//!
//! | key | |
//! |---|---|
//! | `webhook_url` | required: the incoming-webhook URL (its `host:port` must be in `allowed_hosts`) |
//! | `channel` | optional: copied into the body as `channel` |
//! | `username` | optional: copied into the body as `username` |
//!
//! Outcomes follow the plugin guide: 2xx ok; 408, 429 and 5xx retry (honouring `Retry-After`);
//! other statuses, a missing `webhook_url` and denied requests are permanent.

mod message;

use outboxd_plugin::{DeliveryError, Event, Target, config, http, log, outcome};

struct SlackNotify;

impl Target for SlackNotify {
    fn deliver(event: Event) -> Result<(), DeliveryError> {
        let url = config::require("webhook_url")?;
        let options = message::Options {
            channel: config::get("channel"),
            username: config::get("username"),
        };
        let body = message::body(&event.id, &event.event_type, &event.payload, &options);
        let response = http::Request::post(url)
            .header("content-type", "application/json")
            .header("idempotency-key", &event.idempotency_key)
            .body(body.to_string().as_bytes())
            .send()?;
        log::info(format!(
            "slack-notify: event {} attempt {}: HTTP {}",
            event.id, event.attempt, response.status
        ));
        outcome::classify_response(&response)
    }
}

outboxd_plugin::export_target!(SlackNotify);
