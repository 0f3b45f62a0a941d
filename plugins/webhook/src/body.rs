//! The request body: a Standard Webhooks JSON object,
//! `{"type": …, "timestamp": …, "data": …}`.

use outboxd_plugin::{DeliveryError, Event};
use serde::Serialize;
use serde_json::value::RawValue;

use crate::timestamp::rfc3339_millis;

/// The webhook body, serialized with its fields in this order.
#[derive(Serialize)]
struct Body<'a> {
    #[serde(rename = "type")]
    event_type: &'a str,
    timestamp: String,
    data: &'a RawValue,
}

/// Serializes the body for `event`: its type, its acceptance time as an RFC
/// 3339 UTC timestamp and its payload.
///
/// The payload is the `data` member exactly as the producer wrote it (outboxd
/// keeps it byte for byte): key order, spacing and numbers unchanged, so the
/// receiver sees what was sent. It is checked to be JSON, not parsed into a
/// tree; a payload that is not JSON is a permanent error.
pub fn render(event: &Event) -> Result<Vec<u8>, DeliveryError> {
    let data: &RawValue = serde_json::from_str(&event.payload)
        .map_err(|err| DeliveryError::permanent(format!("payload is not valid JSON: {err}")))?;
    let body = Body {
        event_type: &event.event_type,
        timestamp: rfc3339_millis(event.created_at_ms),
        data,
    };
    serde_json::to_vec(&body).map_err(|err| DeliveryError::permanent(format!("cannot serialize the body: {err}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(payload: &str) -> Event {
        Event {
            id: "0190c5c4-0000-7000-8000-000000000001".to_owned(),
            event_type: "order.created".to_owned(),
            payload: payload.to_owned(),
            idempotency_key: "key-1".to_owned(),
            attempt: 1,
            created_at_ms: 1_795_827_723_456,
            headers: Vec::new(),
        }
    }

    #[test]
    fn renders_the_standard_webhooks_shape_with_the_payload_as_written() {
        let body = render(&event(
            r#"{"z": 1, "a": {"y": [1, 2.50, 12345678901234567890123], "b": null}}"#,
        ))
        .unwrap();
        assert_eq!(
            String::from_utf8(body).unwrap(),
            r#"{"type":"order.created","timestamp":"2026-11-28T01:02:03.456Z","data":{"z": 1, "a": {"y": [1, 2.50, 12345678901234567890123], "b": null}}}"#
        );
    }

    #[test]
    fn scalar_payloads_are_data_too() {
        let body = render(&event(r#""just a string""#)).unwrap();
        assert!(body.ends_with(br#","data":"just a string"}"#));
    }

    #[test]
    fn invalid_json_is_permanent() {
        let err = render(&event("{nope")).unwrap_err();
        assert!(!err.is_retry());
        assert!(
            err.reason().starts_with("payload is not valid JSON"),
            "{}",
            err.reason()
        );
    }
}
