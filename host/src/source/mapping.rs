//! From a source row to an outboxd event: the row as read (every mapped column as text),
//! and its validation by exactly the rules of `POST /v1/events` (the row is turned into an
//! event object and goes through [`input::parse`]), plus the producer idempotency key that
//! makes relaying exactly-once.

use std::collections::BTreeMap;

use serde::Serialize;
use serde_json::value::RawValue;

use crate::domain::Millis;
use crate::outbox::input::{self, Accepted, IngestError};
use crate::telemetry::trace_context::TraceParent;

/// A row's id, as the database gave it. SQLite keeps the native value so that updates
/// compare like with like; the servers read it as text and cast it back in SQL.
#[derive(Debug, Clone, PartialEq)]
pub enum RowId {
    Int(i64),
    Text(String),
}

impl std::fmt::Display for RowId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Int(i) => write!(f, "{i}"),
            Self::Text(s) => f.write_str(s),
        }
    }
}

/// One row as read: the mapped columns, as text (`None` for SQL NULL or an unmapped column).
#[derive(Debug, Clone, Default)]
pub struct SourceRow {
    pub id: Option<RowId>,
    pub event_type: Option<String>,
    pub payload: Option<String>,
    pub headers: Option<String>,
    pub idempotency_key: Option<String>,
    pub ordering_key: Option<String>,
    pub aggregate_type: Option<String>,
    /// `created_at` in milliseconds since the epoch, when mapped and readable.
    pub created_at_ms: Option<Millis>,
    /// The row's `order_by` value as text: where the next read of a backlog starts.
    pub order_value: Option<String>,
    /// The `deliver_at` column as text, when mapped and not NULL ...
    pub deliver_at: Option<String>,
    /// ... and as milliseconds since the epoch, when the database could read it as a date/time.
    pub deliver_at_ms: Option<Millis>,
    /// The `traceparent` column, when mapped and not NULL.
    pub traceparent: Option<String>,
}

/// The producer idempotency key of a row: the application's own key when it maps one,
/// otherwise `source:<source name>:<row id>`. A row read again after a crash therefore
/// finds the event it already became.
pub fn producer_key(source: &str, row: &SourceRow, id: &RowId) -> String {
    match &row.idempotency_key {
        Some(k) if !k.is_empty() => k.clone(),
        _ => format!("source:{source}:{id}"),
    }
}

#[derive(Serialize)]
struct EventOut<'a> {
    #[serde(rename = "type")]
    event_type: &'a str,
    payload: &'a RawValue,
    #[serde(skip_serializing_if = "Option::is_none")]
    headers: Option<BTreeMap<String, String>>,
    idempotency_key: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    ordering_key: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    deliver_at: Option<Millis>,
}

/// Validates one row into an event, or says why it cannot be one.
pub fn to_event(source: &str, row: &SourceRow, max_payload_bytes: usize) -> Result<Accepted, String> {
    let id = row.id.as_ref().ok_or("the id column is NULL")?;
    let event_type = row.event_type.as_deref().ok_or("the event type column is NULL")?;
    let payload_text = row.payload.as_deref().ok_or("the payload column is NULL")?;
    let payload: &RawValue = serde_json::from_str(payload_text).map_err(|e| format!("the payload is not JSON: {e}"))?;
    let mut headers: Option<BTreeMap<String, String>> = match row.headers.as_deref() {
        None => None,
        Some(text) => Some(
            serde_json::from_str(text)
                .map_err(|e| format!("the headers column is not a JSON object of strings: {e}"))?,
        ),
    };
    if let Some(agg) = &row.aggregate_type {
        headers
            .get_or_insert_with(BTreeMap::new)
            .insert("aggregate-type".into(), agg.clone());
    }
    if row.idempotency_key.as_deref().is_some_and(input::is_reserved_key) {
        return Err(format!(
            "the idempotency key column starts with one of {:?}, which outboxd keeps for its own events",
            input::RESERVED_KEY_PREFIXES
        ));
    }
    let deliver_at = match (&row.deliver_at, row.deliver_at_ms) {
        (None, _) => None,
        (Some(_), Some(ms)) if ms < 0 => {
            return Err("the deliver_at column is before 1970-01-01".into());
        }
        (Some(_), Some(ms)) => Some(ms),
        (Some(text), None) => {
            return Err(format!(
                "the deliver_at column holds `{}`, which is not a date/time",
                crate::domain::cap_text(text.clone(), 64)
            ));
        }
    };
    let key = producer_key(source, row, id);
    let out = EventOut {
        deliver_at,
        event_type,
        payload,
        headers,
        idempotency_key: &key,
        ordering_key: row.ordering_key.as_deref(),
    };
    let body = serde_json::to_vec(&out).map_err(|e| e.to_string())?;
    let mut event = match input::parse(&body, max_payload_bytes) {
        Ok(batch) => batch.into_vec().pop().ok_or_else(|| "no event".to_owned())?,
        Err(IngestError::Invalid(m) | IngestError::TooLarge(m)) => return Err(m),
    };
    // As with the HTTP header, a value that is not a valid `traceparent` is no trace (the row is
    // still relayed: tracing never refuses an event).
    event.traceparent = row.traceparent.as_deref().and_then(TraceParent::parse);
    Ok(event)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(t: &str, payload: &str) -> SourceRow {
        SourceRow {
            id: Some(RowId::Int(7)),
            event_type: Some(t.into()),
            payload: Some(payload.into()),
            ..SourceRow::default()
        }
    }

    #[test]
    fn a_good_row_becomes_an_event_with_a_derived_key() {
        let e = to_event("shop", &row("order.created", r#"{"id": 1}"#), 1000).unwrap();
        assert_eq!(e.event_type.as_str(), "order.created");
        assert_eq!(e.payload, r#"{"id": 1}"#);
        assert_eq!(e.idempotency_key.unwrap().as_str(), "source:shop:7");
    }

    #[test]
    fn the_applications_key_and_ordering_key_are_kept() {
        let mut r = row("order.created", "1");
        r.idempotency_key = Some("app-key".into());
        r.ordering_key = Some("order-9".into());
        r.aggregate_type = Some("order".into());
        r.headers = Some(r#"{"x-tenant":"acme"}"#.into());
        let e = to_event("shop", &r, 1000).unwrap();
        assert_eq!(e.idempotency_key.unwrap().as_str(), "app-key");
        assert_eq!(e.ordering_key.as_deref(), Some("order-9"));
        assert_eq!(
            e.headers,
            vec![
                ("aggregate-type".to_owned(), "order".to_owned()),
                ("x-tenant".to_owned(), "acme".to_owned())
            ]
        );
    }

    #[test]
    fn a_deliver_at_column_schedules_the_event_and_a_bad_one_is_a_bad_row() {
        let mut r = row("order.created", "1");
        r.deliver_at = Some("2030-01-01 00:00:00".into());
        r.deliver_at_ms = Some(1_893_456_000_000);
        let e = to_event("shop", &r, 1000).unwrap();
        let schedule = e.schedule.expect("scheduled");
        assert_eq!((schedule.at, schedule.delay), (1_893_456_000_000, 0));
        r.deliver_at_ms = None;
        r.deliver_at = Some("next tuesday".into());
        let bad = to_event("shop", &r, 1000).unwrap_err();
        assert_eq!(
            bad,
            "the deliver_at column holds `next tuesday`, which is not a date/time"
        );
        r.deliver_at = Some("1960-01-01".into());
        r.deliver_at_ms = Some(-315_619_200_000);
        assert!(to_event("shop", &r, 1000).unwrap_err().contains("before 1970"));
        r.deliver_at = None;
        r.deliver_at_ms = None;
        assert!(to_event("shop", &r, 1000).unwrap().schedule.is_none());
    }

    #[test]
    fn bad_rows_say_why() {
        let not_json = to_event("s", &row("order.created", "{oops"), 1000).unwrap_err();
        assert!(not_json.contains("not JSON"), "{not_json}");
        let bad_type = to_event("s", &row("order created", "1"), 1000).unwrap_err();
        assert!(bad_type.contains("`type`"), "{bad_type}");
        let reserved = to_event("s", &row("outboxd.delivery.dead", "1"), 1000).unwrap_err();
        assert!(reserved.contains("reserved"), "{reserved}");
        let big = to_event("s", &row("a", "\"xxxxxxxxxx\""), 5).unwrap_err();
        assert!(big.contains("over the limit"), "{big}");
        let mut null = row("a", "1");
        null.payload = None;
        assert!(to_event("s", &null, 100).unwrap_err().contains("NULL"));
        let mut h = row("a", "1");
        h.headers = Some("[1]".into());
        assert!(to_event("s", &h, 100).unwrap_err().contains("headers"));
    }
}
