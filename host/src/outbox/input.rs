//! What a producer sends: parsing and validating one JSON event object or an array of them
//! into [`Accepted`] events, and routing those to their subscribed targets. The HTTP API, the
//! `enqueue` command and the source relays all go through here, so they accept and refuse
//! exactly the same input.

use std::collections::BTreeMap;

use serde::Deserialize;
use serde_json::value::RawValue;
use thiserror::Error;

use crate::domain::{EventId, EventType, Millis, ProducerKey};
use crate::store::NewEvent;
use crate::targets::filter::Input;
use crate::targets::routing::Routes;
use crate::telemetry::trace_context::TraceParent;

/// Event types outboxd emits itself; producers may not use them.
pub const RESERVED_PREFIX: &str = crate::targets::routing::OPERATIONAL_PREFIX;

/// Idempotency-key namespaces outboxd writes itself: the relays' row keys (`source:<name>:<row
/// id>`) and its own operational events (`outboxd.delivery.dead:…`). A producer's key there
/// would take the place of (and so silence) the event outboxd writes under it.
pub const RESERVED_KEY_PREFIXES: &[&str] = &["source:", "outboxd."];

/// Whether `key` is in a namespace of [`RESERVED_KEY_PREFIXES`].
pub fn is_reserved_key(key: &str) -> bool {
    RESERVED_KEY_PREFIXES.iter().any(|p| key.starts_with(p))
}

/// [`parse`] for producers (the API, `enqueue`): also refuses idempotency keys in the
/// namespaces outboxd uses itself.
pub fn parse_from_producer(body: &[u8], max_payload_bytes: usize) -> Result<Batch, IngestError> {
    let batch = parse(body, max_payload_bytes)?;
    let reserved = |a: &Accepted| a.idempotency_key.as_ref().is_some_and(|k| is_reserved_key(k.as_str()));
    let refuse = |at: String| {
        IngestError::Invalid(format!(
            "{at}`idempotency_key` must not start with {}: outboxd keys its own events there",
            RESERVED_KEY_PREFIXES
                .iter()
                .map(|p| format!("`{p}`"))
                .collect::<Vec<_>>()
                .join(" or ")
        ))
    };
    match &batch {
        Batch::One(a) if reserved(a) => Err(refuse(String::new())),
        Batch::Many(v) => match v.iter().position(reserved) {
            Some(i) => Err(refuse(format!("event [{i}]: "))),
            None => Ok(batch),
        },
        Batch::One(_) => Ok(batch),
    }
}

/// Most events one request may carry.
pub const MAX_BATCH: usize = 1000;
/// Most headers one event may carry, and their size limits.
const MAX_HEADERS: usize = 64;
const MAX_HEADER_NAME: usize = 256;
const MAX_HEADER_VALUE: usize = 8192;

/// Why input was refused. Nothing is stored when any event of a request is refused.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum IngestError {
    #[error("{0}")]
    Invalid(String),
    #[error("{0}")]
    TooLarge(String),
}

/// One event as a producer writes it.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct EventIn {
    /// ASCII letters, digits, `.`, `_`, `-`, `:`; not starting with `outboxd.` (reserved).
    #[serde(rename = "type")]
    #[schema(value_type = String, min_length = 1, max_length = 255, pattern = r"^[A-Za-z0-9._:-]+$")]
    event_type: EventType,
    /// Any JSON value, kept byte for byte; at most `max_payload_bytes` of JSON text.
    #[schema(value_type = serde_json::Value)]
    payload: Box<RawValue>,
    /// A key seen before returns `duplicate: true` (and, to a caller that may read events,
    /// the first event's id) and writes nothing. Keys starting with `source:` or `outboxd.`
    /// are outboxd's own and refused.
    #[serde(default)]
    #[schema(value_type = Option<String>, min_length = 1, max_length = 255, pattern = "^[^\\x00]+$")]
    idempotency_key: Option<ProducerKey>,
    /// At most 64; names 1-256 bytes, values at most 8192; handed to plugins sorted by name.
    #[serde(default)]
    #[schema(schema_with = headers_schema)]
    headers: Option<BTreeMap<String, String>>,
    /// Events with the same key reach an `ordered` target in order.
    #[serde(default)]
    #[schema(min_length = 1, max_length = 255, pattern = "^[^\\x00]+$")]
    ordering_key: Option<String>,
    /// Scheduled delivery: not before this time, in milliseconds since the Unix epoch (a time
    /// already past means now). With `delay_ms` too, the later of the two.
    #[serde(default, deserialize_with = "crate::whole::opt_whole")]
    #[schema(minimum = 0, maximum = 9007199254740991_i64)]
    deliver_at: Option<i64>,
    /// Scheduled delivery: this many milliseconds after acceptance (at most 366 days). With
    /// `deliver_at` too, the later of the two.
    #[serde(default, deserialize_with = "crate::whole::opt_whole")]
    #[schema(minimum = 0, maximum = 31622400000_i64)]
    delay_ms: Option<i64>,
    /// 0 (the default) to 3600: within each target, claimed as if accepted this many seconds
    /// earlier, so ahead of what is waiting unless that has waited longer than the difference
    /// (nothing starves). A scheduled event keeps its time.
    #[serde(default, deserialize_with = "crate::whole::opt_whole")]
    #[schema(minimum = 0, maximum = 3600)]
    priority: Option<i64>,
}

/// The highest `priority`: an hour's head start.
pub const MAX_PRIORITY: i64 = 3600;

/// The longest `delay_ms`: 366 days.
pub const MAX_DELAY_MS: i64 = 366 * 24 * 3600 * 1000;

/// The schema of `headers`, with the limits [`parse`] enforces.
fn headers_schema() -> utoipa::openapi::Object {
    use utoipa::openapi::schema::{ObjectBuilder, Type};
    let text = |min: usize, max: usize| {
        ObjectBuilder::new()
            .schema_type(Type::String)
            .min_length(Some(min))
            .max_length(Some(max))
    };
    ObjectBuilder::new()
        .schema_type(utoipa::openapi::schema::SchemaType::from_iter([
            Type::Object,
            Type::Null,
        ]))
        .max_properties(Some(MAX_HEADERS))
        .property_names(Some(text(1, MAX_HEADER_NAME)))
        .additional_properties(Some(text(0, MAX_HEADER_VALUE)))
        .build()
}

/// A validated event, not yet routed.
#[derive(Debug)]
pub struct Accepted {
    pub event_type: EventType,
    /// The payload's JSON text exactly as sent.
    pub payload: String,
    pub idempotency_key: Option<ProducerKey>,
    /// Headers in name order.
    pub headers: Vec<(String, String)>,
    pub ordering_key: Option<String>,
    /// When its deliveries may start, if the producer scheduled it.
    pub schedule: Option<Schedule>,
    /// Seconds of head start in its targets' queues (0 to [`MAX_PRIORITY`]).
    pub priority: u16,
    /// The producer's trace (a `traceparent` header, a source's mapped column).
    pub traceparent: Option<TraceParent>,
}

/// A producer's schedule for an event's deliveries: not before `at` (milliseconds since the
/// Unix epoch) and not before `delay` milliseconds after acceptance (each 0 when not given).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Schedule {
    pub at: Millis,
    pub delay: Millis,
}

impl Schedule {
    /// The time the deliveries become due for an event accepted at `now`: the later bound.
    pub fn due(self, now: Millis) -> Millis {
        self.at.max(now.saturating_add(self.delay))
    }
}

/// When the deliveries of an event accepted at `now` become due: its schedule's time if that is
/// later, else `now` less its priority's head start (`None`: at acceptance, the common case).
fn due_at(schedule: Option<Schedule>, priority: u16, now: Millis) -> Option<Millis> {
    match schedule.map(|s| s.due(now)) {
        Some(at) if at > now => Some(at),
        _ if priority > 0 => Some(now - Millis::from(priority) * 1000),
        _ => None,
    }
}

/// Whether the request body was one event or an array of them.
#[derive(Debug)]
pub enum Batch {
    One(Accepted),
    Many(Vec<Accepted>),
}

impl Batch {
    pub fn into_vec(self) -> Vec<Accepted> {
        match self {
            Batch::One(a) => vec![a],
            Batch::Many(v) => v,
        }
    }
}

/// Parses and validates a request body: one event object, or an array of 1 to [`MAX_BATCH`].
pub fn parse(body: &[u8], max_payload_bytes: usize) -> Result<Batch, IngestError> {
    let first = body.iter().find(|b| !b.is_ascii_whitespace());
    match first {
        None => Err(IngestError::Invalid(
            "the body is empty: send a JSON event object or an array of them".into(),
        )),
        Some(b'[') => {
            let items: Vec<&RawValue> =
                serde_json::from_slice(body).map_err(|e| IngestError::Invalid(format!("invalid JSON: {e}")))?;
            if items.is_empty() {
                return Err(IngestError::Invalid("the batch is empty".into()));
            }
            if items.len() > MAX_BATCH {
                return Err(IngestError::Invalid(format!(
                    "the batch has {} events; at most {MAX_BATCH} are accepted per request",
                    items.len()
                )));
            }
            items
                .iter()
                .enumerate()
                .map(|(i, raw)| {
                    one(raw.get().as_bytes(), max_payload_bytes).map_err(|e| match e {
                        IngestError::Invalid(m) => IngestError::Invalid(format!("event [{i}]: {m}")),
                        IngestError::TooLarge(m) => IngestError::TooLarge(format!("event [{i}]: {m}")),
                    })
                })
                .collect::<Result<Vec<_>, _>>()
                .map(Batch::Many)
        }
        Some(_) => one(body, max_payload_bytes).map(Batch::One),
    }
}

fn one(body: &[u8], max_payload_bytes: usize) -> Result<Accepted, IngestError> {
    let e: EventIn = serde_json::from_slice(body).map_err(|e| IngestError::Invalid(describe_json_error(&e)))?;
    if e.event_type.as_str().starts_with(RESERVED_PREFIX) {
        return Err(IngestError::Invalid(format!(
            "event types starting with `{RESERVED_PREFIX}` are reserved for outboxd's own operational events"
        )));
    }
    if let Some(k) = &e.ordering_key
        && (k.is_empty() || k.len() > 255)
    {
        return Err(IngestError::Invalid("`ordering_key` must be 1-255 bytes".into()));
    }
    if e.ordering_key.as_deref().is_some_and(|k| k.contains('\0')) {
        return Err(IngestError::Invalid(
            "`ordering_key` must not contain NUL characters".into(),
        ));
    }
    let payload = e.payload.get();
    if payload.len() > max_payload_bytes {
        return Err(IngestError::TooLarge(format!(
            "the payload is {} bytes, over the limit of {max_payload_bytes}",
            payload.len()
        )));
    }
    let headers: Vec<(String, String)> = e.headers.unwrap_or_default().into_iter().collect();
    if headers.len() > MAX_HEADERS {
        return Err(IngestError::Invalid(format!(
            "at most {MAX_HEADERS} headers are accepted"
        )));
    }
    if let Some((name, _)) = headers
        .iter()
        .find(|(n, v)| n.is_empty() || n.len() > MAX_HEADER_NAME || v.len() > MAX_HEADER_VALUE)
    {
        return Err(IngestError::Invalid(format!(
            "header `{name}`: names must be 1-{MAX_HEADER_NAME} bytes and values at most {MAX_HEADER_VALUE}"
        )));
    }
    if e.deliver_at.is_some_and(|at| at < 0) {
        return Err(IngestError::Invalid(
            "`deliver_at` is milliseconds since the Unix epoch: 0 or more".into(),
        ));
    }
    if e.delay_ms.is_some_and(|d| !(0..=MAX_DELAY_MS).contains(&d)) {
        return Err(IngestError::Invalid(format!(
            "`delay_ms` must be between 0 and {MAX_DELAY_MS} (366 days)"
        )));
    }
    let priority = match e.priority {
        None => 0,
        Some(p) if (0..=MAX_PRIORITY).contains(&p) => p as u16,
        Some(_) => {
            return Err(IngestError::Invalid(format!(
                "`priority` must be between 0 and {MAX_PRIORITY}"
            )));
        }
    };
    let schedule = match (e.deliver_at, e.delay_ms) {
        (None, None) => None,
        (at, delay) => Some(Schedule {
            at: at.unwrap_or(0),
            delay: delay.unwrap_or(0),
        }),
    };
    Ok(Accepted {
        event_type: e.event_type,
        payload: payload.to_owned(),
        idempotency_key: e.idempotency_key,
        headers,
        ordering_key: e.ordering_key,
        schedule,
        priority,
        traceparent: None,
    })
}

fn describe_json_error(e: &serde_json::Error) -> String {
    use serde_json::error::Category;
    match e.classify() {
        Category::Syntax | Category::Eof => format!("invalid JSON: {e}"),
        Category::Data | Category::Io => e.to_string(),
    }
}

/// Gives each accepted event an id, its subscribed targets and, if scheduled, the time its
/// deliveries become due (for an event accepted at `now`).
pub fn route(accepted: Vec<Accepted>, routes: &Routes, now: Millis) -> Vec<NewEvent> {
    accepted
        .into_iter()
        .map(|a| NewEvent {
            id: EventId::new(),
            targets: routes.targets_for_event(&mut Input::new(a.event_type.as_str(), &a.payload, &a.headers)),
            event_type: a.event_type,
            payload: a.payload,
            headers: a.headers,
            idempotency_key: a.idempotency_key,
            ordering_key: a.ordering_key,
            due_at: due_at(a.schedule, a.priority, now),
            traceparent: a.traceparent,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(body: &str) -> IngestError {
        parse(body.as_bytes(), 100).unwrap_err()
    }

    #[test]
    fn one_event_keeps_its_payload_text() {
        let b = parse(
            br#"{"type":"order.created","payload":{"b":1, "a":[2]},"headers":{"z":"1","a":"2"}}"#,
            100,
        )
        .unwrap();
        let Batch::One(a) = b else { panic!("expected one") };
        assert_eq!(a.payload, r#"{"b":1, "a":[2]}"#);
        assert_eq!(
            a.headers,
            vec![("a".to_string(), "2".to_string()), ("z".to_string(), "1".to_string())]
        );
        assert!(a.idempotency_key.is_none());
    }

    #[test]
    fn arrays_are_batches() {
        let b = parse(
            br#" [{"type":"a","payload":1},{"type":"b","payload":null,"idempotency_key":"k"}]"#,
            100,
        )
        .unwrap();
        assert!(matches!(b, Batch::Many(ref v) if v.len() == 2));
    }

    #[test]
    fn bad_input_is_refused_with_a_reason() {
        assert!(matches!(err(""), IngestError::Invalid(m) if m.contains("empty")));
        assert!(matches!(err("{"), IngestError::Invalid(m) if m.contains("invalid JSON")));
        assert!(matches!(err(r#"{"payload":{}}"#), IngestError::Invalid(m) if m.contains("missing field `type`")));
        assert!(matches!(err(r#"{"type":"a"}"#), IngestError::Invalid(m) if m.contains("missing field `payload`")));
        assert!(
            matches!(err(r#"{"type":"","payload":1}"#), IngestError::Invalid(m) if m.contains("must not be empty"))
        );
        assert!(matches!(err(r#"{"type":7,"payload":1}"#), IngestError::Invalid(m) if m.contains("invalid type")));
        assert!(
            matches!(err(r#"{"type":"a","payload":1,"idempotencyKey":"k"}"#), IngestError::Invalid(m) if m.contains("unknown field `idempotencyKey`"))
        );
        assert!(matches!(
            err(r#"{"type":"a","payload":1,"headers":{"h":1}}"#),
            IngestError::Invalid(_)
        ));
        assert!(matches!(err("[]"), IngestError::Invalid(m) if m.contains("empty")));
        assert!(
            matches!(err(r#"{"type":"outboxd.delivery.dead","payload":1}"#), IngestError::Invalid(m) if m.contains("reserved"))
        );
        assert!(
            matches!(err(r#"{"type":"a","payload":1,"ordering_key":""}"#), IngestError::Invalid(m) if m.contains("ordering_key"))
        );
        // PostgreSQL's text cannot hold NUL: refused on every store, not a 503 on one of them.
        assert!(
            matches!(err(r#"{"type":"a","payload":1,"ordering_key":"a\u0000b"}"#), IngestError::Invalid(m) if m.contains("NUL"))
        );
        assert!(
            matches!(err(r#"{"type":"a","payload":1,"idempotency_key":"k\u0000"}"#), IngestError::Invalid(m) if m.contains("NUL"))
        );
        assert!(
            matches!(err(r#"[{"type":"a","payload":1},{"type":"b"}]"#), IngestError::Invalid(m) if m.starts_with("event [1]"))
        );
    }

    #[test]
    fn payload_size_is_limited() {
        let big = format!(r#"{{"type":"a","payload":"{}"}}"#, "x".repeat(99));
        assert!(matches!(err(&big), IngestError::TooLarge(m) if m.contains("101 bytes")));
        let fits = format!(r#"{{"type":"a","payload":"{}"}}"#, "x".repeat(98));
        assert!(parse(fits.as_bytes(), 100).is_ok());
    }

    #[test]
    fn routing_assigns_subscribed_targets() {
        let routes = Routes::new([("crm".parse().unwrap(), vec!["order.*".parse().unwrap()])]);
        let b = parse(
            br#"[{"type":"order.created","payload":1},{"type":"user.created","payload":1}]"#,
            100,
        )
        .unwrap();
        let events = route(b.into_vec(), &routes, 0);
        assert_eq!(events[0].targets.len(), 1);
        assert!(events[1].targets.is_empty());
        assert_ne!(events[0].id, events[1].id);
    }
}

#[cfg(test)]
mod reserved_tests {
    use super::*;

    #[test]
    fn producers_cannot_take_the_keys_outboxd_writes_itself() {
        for body in [
            r#"{"type":"a","payload":1,"idempotency_key":"source:shop:1000"}"#,
            r#"[{"type":"a","payload":1},{"type":"a","payload":1,"idempotency_key":"outboxd.delivery.dead:7:1"}]"#,
        ] {
            let e = parse_from_producer(body.as_bytes(), 100).unwrap_err();
            assert!(
                matches!(&e, IngestError::Invalid(m) if m.contains("must not start with")),
                "{e}"
            );
            // What a relay writes under that key is still accepted from the relay.
            assert!(parse(body.as_bytes(), 100).is_ok());
        }
        assert!(parse_from_producer(br#"{"type":"a","payload":1,"idempotency_key":"Source:x"}"#, 100).is_ok());
    }

    #[test]
    fn a_schedule_is_due_at_the_later_of_its_bounds() {
        let one = |body: &str| match parse(body.as_bytes(), 100).unwrap() {
            Batch::One(a) => a.schedule,
            Batch::Many(_) => panic!("one event"),
        };
        assert_eq!(one(r#"{"type":"a","payload":1}"#), None);
        let at = one(r#"{"type":"a","payload":1,"deliver_at":5000}"#).unwrap();
        assert_eq!((at.due(1000), at.due(9000)), (5000, 9000));
        let delay = one(r#"{"type":"a","payload":1,"delay_ms":300.0}"#).unwrap();
        assert_eq!(delay.due(1000), 1300);
        let both = one(r#"{"type":"a","payload":1,"deliver_at":5000,"delay_ms":300}"#).unwrap();
        assert_eq!((both.due(1000), both.due(4900)), (5000, 5200));
        for bad in [
            r#"{"type":"a","payload":1,"deliver_at":-1}"#,
            r#"{"type":"a","payload":1,"delay_ms":31622400001}"#,
            r#"{"type":"a","payload":1,"delay_ms":-5}"#,
            r#"{"type":"a","payload":1,"deliver_at":"soon"}"#,
        ] {
            assert!(parse(bad.as_bytes(), 100).is_err(), "{bad}");
        }
    }

    #[test]
    fn a_priority_is_a_head_start_unless_the_event_is_scheduled_later() {
        let later = Some(Schedule { at: 90_000, delay: 0 });
        let past = Some(Schedule { at: 5, delay: 0 });
        assert_eq!(due_at(None, 0, 60_000), None);
        assert_eq!(due_at(None, 10, 60_000), Some(50_000));
        assert_eq!(due_at(past, 10, 60_000), Some(50_000));
        assert_eq!(due_at(past, 0, 60_000), None);
        assert_eq!(due_at(later, 10, 60_000), Some(90_000));
        let p = |body: &str| parse(body.as_bytes(), 100).map(|b| b.into_vec()[0].priority);
        assert_eq!(p(r#"{"type":"a","payload":1,"priority":3600}"#), Ok(3600));
        assert!(p(r#"{"type":"a","payload":1,"priority":3601}"#).is_err());
        assert!(p(r#"{"type":"a","payload":1,"priority":-1}"#).is_err());
    }
}
