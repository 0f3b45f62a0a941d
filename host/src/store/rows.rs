//! Rows as both backends read them (plain column values) and their one decoding into the
//! model's records: a value this version does not understand is [`StoreError::Corrupt`].

use std::str::FromStr;

use crate::domain::{DeliveryStatus, Millis, ReceiverResponse, TargetName};
use crate::store::history::push_running_attempt;
use crate::store::{
    AttemptRecord, Cancellation, CancelledDelivery, DeliveryDetail, FailedDelivery, StatusCounts, StoreError,
    StoredEvent, VersionAttempts,
};
use crate::telemetry::trace_context::TraceParent;

/// Parses a stored string (an id, a name, a status).
pub(crate) fn decode<T: FromStr>(s: &str) -> Result<T, StoreError>
where
    T::Err: std::fmt::Display,
{
    s.parse().map_err(|e: T::Err| StoreError::Corrupt(e.to_string()))
}

/// A stored count or number, which the schema keeps non-negative.
pub(crate) fn count(n: i64) -> u32 {
    n.clamp(0, i64::from(u32::MAX)) as u32
}

/// An event's headers as stored: a JSON array of `[name, value]`.
pub(crate) fn encode_headers(headers: &[(String, String)]) -> Result<String, StoreError> {
    serde_json::to_string(headers).map_err(|e| StoreError::Corrupt(e.to_string()))
}

/// The columns of `events`: id, type, payload, headers, idempotency_key, ordering_key,
/// created_at, traceparent.
pub(crate) type EventColumns = (
    String,
    String,
    String,
    String,
    Option<String>,
    Option<String>,
    i64,
    Option<String>,
);

/// An event as a search lists it: id, type, idempotency key, created at.
pub(crate) type SummaryColumns = (String, String, Option<String>, i64);

/// An event of a search, with its deliveries' `(target, status)` as stored.
pub(crate) fn event_summary(
    (id, event_type, idempotency_key, created_at): SummaryColumns,
    deliveries: Vec<(String, String)>,
) -> Result<crate::store::EventSummary, StoreError> {
    Ok(crate::store::EventSummary {
        id: decode(&id)?,
        event_type,
        idempotency_key,
        created_at,
        deliveries: deliveries
            .into_iter()
            .map(|(target, status)| Ok((decode(&target)?, decode(&status)?)))
            .collect::<Result<_, StoreError>>()?,
    })
}

pub(crate) fn stored_event(
    (id, event_type, payload, headers, idempotency_key, ordering_key, created_at, traceparent): EventColumns,
) -> Result<StoredEvent, StoreError> {
    Ok(StoredEvent {
        id: decode(&id)?,
        event_type,
        payload,
        headers: serde_json::from_str(&headers).map_err(|e| StoreError::Corrupt(e.to_string()))?,
        idempotency_key,
        ordering_key,
        created_at,
        // Validated when accepted; a value this version cannot read is no trace, not an error.
        traceparent: traceparent.as_deref().and_then(TraceParent::parse),
    })
}

/// A delivery of the event detail.
pub(crate) struct DeliveryRow {
    pub id: i64,
    pub target: String,
    pub status: String,
    pub attempts: i64,
    pub last_error: Option<String>,
    pub next_attempt_at: Millis,
    pub delivered_at: Option<Millis>,
    pub attempt_seq: i64,
    /// When it was claimed, while it is in flight.
    pub updated_at: Millis,
}

/// One row of `select_deliveries_of_event`: id, target, status, attempts, last error, next
/// attempt at, delivered at, attempt seq, updated at ([`DeliveryRow`]'s fields in order).
pub(crate) type DeliveryColumns = (
    i64,
    String,
    String,
    i64,
    Option<String>,
    Millis,
    Option<Millis>,
    i64,
    Millis,
);

impl From<DeliveryColumns> for DeliveryRow {
    fn from(c: DeliveryColumns) -> Self {
        let (id, target, status, attempts, last_error, next_attempt_at, delivered_at, attempt_seq, updated_at) = c;
        Self {
            id,
            target,
            status,
            attempts,
            last_error,
            next_attempt_at,
            delivered_at,
            attempt_seq,
            updated_at,
        }
    }
}

/// One row of `attempts`: n, started_at, duration_ms, outcome, error, plugin_hash,
/// response_status, response_body, detail.
pub(crate) type AttemptColumns = (
    i64,
    Millis,
    Option<i64>,
    String,
    Option<String>,
    Option<String>,
    Option<i64>,
    Option<String>,
    Option<String>,
);

/// The receiver's response as stored (status, body), if there was one.
pub(crate) fn response(status: Option<i64>, body: Option<String>) -> Result<Option<ReceiverResponse>, StoreError> {
    let Some(status) = status else {
        return Ok(None);
    };
    let status = u16::try_from(status).map_err(|_| StoreError::Corrupt(format!("response status {status}")))?;
    Ok(Some(ReceiverResponse {
        status,
        body: body.unwrap_or_default(),
    }))
}

/// A delivery with its stored history rows, completed by its running attempt.
pub(crate) fn delivery_detail(row: DeliveryRow, attempts: Vec<AttemptColumns>) -> Result<DeliveryDetail, StoreError> {
    let status: DeliveryStatus = decode(&row.status)?;
    let mut history = attempts
        .into_iter()
        .map(
            |(n, started_at, duration_ms, outcome, error, plugin_hash, status, body, detail)| {
                Ok(AttemptRecord {
                    n: count(n),
                    started_at,
                    duration_ms: duration_ms.map(|d| d.max(0) as u64),
                    outcome: decode(&outcome)?,
                    error,
                    plugin_hash,
                    response: response(status, body)?,
                    detail,
                })
            },
        )
        .collect::<Result<Vec<_>, StoreError>>()?;
    push_running_attempt(&mut history, status, count(row.attempt_seq), row.updated_at);
    Ok(DeliveryDetail {
        target: decode(&row.target)?,
        status,
        attempts: count(row.attempts),
        last_error: row.last_error,
        next_attempt_at: (status == DeliveryStatus::Pending).then_some(row.next_attempt_at),
        delivered_at: row.delivered_at,
        history,
    })
}

/// One row of the dead-letter listing: delivery id, event id, event type, target, status,
/// attempts, last error, failed at, and the last attempt's response status and body.
pub(crate) type FailedColumns = (
    i64,
    String,
    String,
    String,
    String,
    i64,
    Option<String>,
    Millis,
    Option<i64>,
    Option<String>,
);

pub(crate) fn failed_delivery(
    (
        delivery_id,
        event_id,
        event_type,
        target,
        status,
        attempts,
        last_error,
        failed_at,
        response_status,
        response_body,
    ): FailedColumns,
) -> Result<FailedDelivery, StoreError> {
    Ok(FailedDelivery {
        delivery_id,
        event_id: decode(&event_id)?,
        event_type,
        target: decode(&target)?,
        status: decode(&status)?,
        attempts: count(attempts),
        last_error,
        failed_at,
        last_response: response(response_status, response_body)?,
    })
}

/// Status counts from (target, status, count) rows.
pub(crate) fn status_counts(rows: Vec<(String, String, i64)>) -> Result<StatusCounts, StoreError> {
    let mut counts = StatusCounts::new();
    for (target, status, n) in rows {
        counts
            .entry(target)
            .or_default()
            .insert(decode(&status)?, n.max(0) as u64);
    }
    Ok(counts)
}

/// Attempts per version from (target, plugin hash, attempts) rows.
pub(crate) fn version_attempts(rows: Vec<(String, String, i64)>) -> VersionAttempts {
    let mut out = VersionAttempts::new();
    for (target, hash, n) in rows {
        out.entry(target).or_default().insert(hash, n.max(0) as u64);
    }
    out
}

/// What a cancellation of event `id` did, from each delivery's `(target, status)` before it:
/// those it takes ([`DeliveryStatus::is_cancellable`]) are `cancelled` after it, the others
/// unchanged.
pub(crate) fn cancellation(id: &str, before: Vec<(String, String)>) -> Result<Cancellation, StoreError> {
    let deliveries = before
        .into_iter()
        .map(|(target, status)| {
            let was: DeliveryStatus = decode(&status)?;
            Ok(CancelledDelivery {
                target: decode(&target)?,
                was,
                status: if was.is_cancellable() {
                    DeliveryStatus::Cancelled
                } else {
                    was
                },
            })
        })
        .collect::<Result<_, StoreError>>()?;
    Ok(Cancellation {
        event_id: decode(id)?,
        deliveries,
    })
}

/// The deliveries, of each delivery's `(target, status)`, that are not final yet.
pub(crate) fn not_final(statuses: Vec<(String, String)>) -> Result<Vec<(TargetName, DeliveryStatus)>, StoreError> {
    let mut out = Vec::new();
    for (target, status) in statuses {
        let status: DeliveryStatus = decode(&status)?;
        if !status.is_final() {
            out.push((decode(&target)?, status));
        }
    }
    Ok(out)
}
