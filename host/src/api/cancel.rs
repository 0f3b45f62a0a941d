//! Cancelling an event: `POST /v1/events/{id}/cancel`, and `POST /v1/events/cancel` with the
//! producer's idempotency key in a JSON body. The event's deliveries that wait (`pending`,
//! `paused`) or failed (`dead`) become `cancelled`, a final status; one `in_flight` is left
//! to finish its attempt (a retry of it makes it pending again, and a repeated cancel takes
//! it); the answer says, per target, what happened. The `admin` scope, as for replay.

use std::sync::Arc;

use axum::Json;
use axum::body::Bytes;
use axum::extract::State;
use axum::extract::rejection::BytesRejection;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::extract::PathParam;
use super::{ApiError, AppState, openapi};
use crate::domain::{DeliveryStatus, EventId, InvalidValue, ProducerKey, now_ms};
use crate::store::{Cancellation, CancelledDelivery, EventRef};

/// What a cancellation did to one delivery.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum CancelResult {
    /// This request cancelled it.
    Cancelled,
    /// Its attempt is running and cannot be recalled: it finishes (delivered, dead or
    /// discarded, or pending again after a retry, which a repeated cancel takes).
    InFlight,
    /// It was final already (`delivered`, `discarded` or `cancelled`): unchanged.
    AlreadyFinal,
}

impl CancelResult {
    fn of(d: &CancelledDelivery) -> Self {
        match (d.was, d.status) {
            (DeliveryStatus::InFlight, _) => Self::InFlight,
            (was, now) if was != now => Self::Cancelled,
            _ => Self::AlreadyFinal,
        }
    }

    fn as_str(self) -> &'static str {
        match self {
            Self::Cancelled => "cancelled",
            Self::InFlight => "in_flight",
            Self::AlreadyFinal => "already_final",
        }
    }
}

/// What a cancellation did to one delivery of the event.
#[derive(Serialize, ToSchema)]
pub(crate) struct CancelledDeliveryOut {
    target: String,
    /// `cancelled` (by this request), `in_flight` (its attempt runs and finishes; not
    /// cancelled) or `already_final` (`delivered`, `discarded` or `cancelled` before).
    #[schema(value_type = String, pattern = "^(cancelled|in_flight|already_final)$")]
    result: &'static str,
    /// Its status before the request.
    #[schema(value_type = String)]
    was: &'static str,
    /// Its status now.
    #[schema(value_type = String)]
    status: &'static str,
}

/// The answer to a cancellation.
#[derive(Serialize, ToSchema)]
pub(crate) struct CancelOut {
    event_id: String,
    /// How many deliveries this request cancelled.
    cancelled: usize,
    /// Every delivery of the event, by target name.
    deliveries: Vec<CancelledDeliveryOut>,
}

impl From<Cancellation> for CancelOut {
    fn from(c: Cancellation) -> Self {
        let deliveries: Vec<CancelledDeliveryOut> = c
            .deliveries
            .iter()
            .map(|d| CancelledDeliveryOut {
                target: d.target.to_string(),
                result: CancelResult::of(d).as_str(),
                was: d.was.as_str(),
                status: d.status.as_str(),
            })
            .collect();
        Self {
            event_id: c.event_id.to_string(),
            cancelled: c
                .deliveries
                .iter()
                .filter(|d| CancelResult::of(d) == CancelResult::Cancelled)
                .count(),
            deliveries,
        }
    }
}

/// The body of `POST /v1/events/cancel`.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct CancelByKeyIn {
    /// The idempotency key the producer sent with the event (the first event accepted with
    /// it is meant).
    #[schema(value_type = String, min_length = 1, max_length = 255, pattern = "^[^\\x00]+$")]
    idempotency_key: ProducerKey,
}

async fn cancel(state: &AppState, event: EventRef) -> Result<Json<CancelOut>, ApiError> {
    let what = match &event {
        EventRef::Id(id) => format!("no event with id {id}"),
        EventRef::ProducerKey(key) => format!("no stored event with idempotency key `{}`", key.as_str()),
    };
    let done = state
        .store
        .cancel(event, now_ms())
        .await?
        .ok_or(ApiError::NotFound(what))?;
    Ok(Json(done.into()))
}

#[utoipa::path(
    post,
    path = "/v1/events/{id}/cancel",
    tag = "events",
    summary = "Cancel an event's deliveries that are not final",
    description = "Its `pending`, `paused` and `dead` deliveries become `cancelled` (final: never attempted \
                   or replayed again). One `in_flight` cannot be recalled: it is reported as `in_flight` and \
                   finishes its attempt (should that be a retry, it is pending again, and cancelling again \
                   takes it). `200` also when nothing was left to cancel; each delivery says what it was.",
    params(("id" = String, Path, description = "The event id (a UUID)", pattern = "^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$")),
    responses(
        (status = 200, description = "What happened to each delivery", body = CancelOut),
        (status = 400, description = "Not a UUID", body = openapi::ErrorBody),
        openapi::NeedsAdmin,
        (status = 404, description = "No such event", body = openapi::ErrorBody),
        (status = 415, description = "A body was sent that is not `application/json`", body = openapi::ErrorBody),
        openapi::StoreFailure,
    ),
    security(("bearer" = ["admin"]), ()),
)]
pub(super) async fn cancel_event(
    State(state): State<Arc<AppState>>,
    PathParam(id): PathParam,
) -> Result<Json<CancelOut>, ApiError> {
    let id: EventId = id.parse().map_err(|e: InvalidValue| ApiError::BadRequest(e.0))?;
    cancel(&state, EventRef::Id(id)).await
}

#[utoipa::path(
    post,
    path = "/v1/events/cancel",
    tag = "events",
    summary = "Cancel an event named by the producer's idempotency key",
    description = "As `POST /v1/events/{id}/cancel`, for the event first accepted with `idempotency_key`. \
                   `404` when the key is unknown, or its event was already removed by retention.",
    request_body(content = CancelByKeyIn, content_type = "application/json"),
    responses(
        (status = 200, description = "What happened to each delivery", body = CancelOut),
        (status = 400, description = "Not a JSON object with an `idempotency_key`", body = openapi::ErrorBody),
        openapi::NeedsAdmin,
        (status = 404, description = "No stored event with this key", body = openapi::ErrorBody),
        (status = 415, description = "The body is not `application/json`", body = openapi::ErrorBody),
        openapi::StoreFailure,
    ),
    security(("bearer" = ["admin"]), ()),
)]
pub(super) async fn cancel_by_key(
    State(state): State<Arc<AppState>>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<CancelOut>, ApiError> {
    let body = body.map_err(|e| ApiError::BadRequest(e.body_text()))?;
    let request: CancelByKeyIn = serde_json::from_slice(&body).map_err(|e| {
        ApiError::BadRequest(format!(
            "the body must be a JSON object `{{\"idempotency_key\": \"…\"}}`: {e}"
        ))
    })?;
    cancel(&state, EventRef::ProducerKey(request.idempotency_key)).await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn delivery(was: DeliveryStatus, status: DeliveryStatus) -> CancelledDelivery {
        CancelledDelivery {
            target: "crm".parse().unwrap(),
            was,
            status,
        }
    }

    #[test]
    fn each_delivery_says_what_the_cancellation_did() {
        use DeliveryStatus::*;
        for (was, status, result) in [
            (Pending, Cancelled, "cancelled"),
            (Paused, Cancelled, "cancelled"),
            (Dead, Cancelled, "cancelled"),
            (InFlight, InFlight, "in_flight"),
            (Delivered, Delivered, "already_final"),
            (Discarded, Discarded, "already_final"),
            (Cancelled, Cancelled, "already_final"),
        ] {
            assert_eq!(CancelResult::of(&delivery(was, status)).as_str(), result, "{was:?}");
        }
        let out = CancelOut::from(Cancellation {
            event_id: EventId::new(),
            deliveries: vec![delivery(Pending, Cancelled), delivery(Delivered, Delivered)],
        });
        assert_eq!(out.cancelled, 1);
    }

    #[test]
    fn the_key_body_is_strict() {
        assert!(serde_json::from_str::<CancelByKeyIn>(r#"{"idempotency_key": "order-7"}"#).is_ok());
        for bad in [
            "{}",
            r#"{"idempotency_key": ""}"#,
            r#"{"idempotency_key": 7}"#,
            r#"{"idempotency_key": "a", "more": 1}"#,
            "null",
            "",
        ] {
            assert!(serde_json::from_str::<CancelByKeyIn>(bad).is_err(), "{bad}");
        }
    }
}
