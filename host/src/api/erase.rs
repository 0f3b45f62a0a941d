//! Erasing an event's payload: `DELETE /v1/events/{id}/payload`, and `DELETE
//! /v1/events/payload?idempotency_key=…` by the producer's key. Only once every delivery of the
//! event is final (else `409`, naming those that are not); the event row, its deliveries, their
//! history and the producer key stay, and `GET /v1/events/{id}` shows `"payload": null` and
//! `erased_at`. The `admin` scope, as for replay.

use std::sync::Arc;

use axum::Json;
use axum::extract::State;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use super::extract::PathParam;
use super::{ApiError, AppState, openapi};
use crate::domain::{EventId, InvalidValue, ProducerKey, format_ms, now_ms};
use crate::store::{Erasure, EventRef};

/// The answer to an erasure.
#[derive(Serialize, ToSchema)]
pub(crate) struct ErasedOut {
    event_id: String,
    /// When the payload was erased (by this request, or before).
    erased_at: String,
    /// It had been erased before: nothing changed.
    already_erased: bool,
}

/// The query of `DELETE /v1/events/payload`.
#[derive(Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub(crate) struct EraseByKeyQuery {
    /// The idempotency key the producer sent with the event.
    #[param(value_type = String, min_length = 1, max_length = 255, pattern = "^[^\\x00]+$")]
    idempotency_key: ProducerKey,
}

async fn erase(state: &AppState, event: EventRef) -> Result<Json<ErasedOut>, ApiError> {
    let what = match &event {
        EventRef::Id(id) => format!("no event with id {id}"),
        EventRef::ProducerKey(key) => format!("no stored event with idempotency key `{}`", key.as_str()),
    };
    let (event_id, done) = state
        .store
        .erase_payload(event, now_ms())
        .await?
        .ok_or(ApiError::NotFound(what))?;
    let (at, already_erased) = match done {
        Erasure::Erased { at } => (at, false),
        Erasure::AlreadyErased { at } => (at, true),
        Erasure::NotFinal(waiting) => {
            let list: Vec<String> = waiting
                .iter()
                .map(|(target, status)| format!("{target} ({})", status.as_str()))
                .collect();
            return Err(ApiError::Conflict(format!(
                "the payload is kept until every delivery is final; not final: {} \
                 (wait for them, or cancel the event first)",
                list.join(", ")
            )));
        }
    };
    Ok(Json(ErasedOut {
        event_id: event_id.to_string(),
        erased_at: format_ms(at),
        already_erased,
    }))
}

#[utoipa::path(
    delete,
    path = "/v1/events/{id}/payload",
    tag = "events",
    summary = "Erase an event's payload and headers once its deliveries are final",
    description = "The event row, its deliveries, their history and the producer's idempotency key stay; \
                   `GET /v1/events/{id}` then shows `\"payload\": null` and `erased_at`. `409` while a \
                   delivery is not final (`pending`, `in_flight`, `paused`), naming them. An erased \
                   event's dead or discarded deliveries are no longer replayed. Idempotent.",
    params(("id" = String, Path, description = "The event id (a UUID)", pattern = "^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$")),
    responses(
        (status = 200, description = "Erased (now or before)", body = ErasedOut),
        (status = 400, description = "Not a UUID", body = openapi::ErrorBody),
        openapi::NeedsAdmin,
        (status = 404, description = "No such event", body = openapi::ErrorBody),
        (status = 409, description = "A delivery is not final yet (named in the error)", body = openapi::ErrorBody),
        (status = 415, description = "A body was sent that is not `application/json`", body = openapi::ErrorBody),
        openapi::StoreFailure,
    ),
    security(("bearer" = ["admin"]), ()),
)]
pub(super) async fn erase_event_payload(
    State(state): State<Arc<AppState>>,
    PathParam(id): PathParam,
) -> Result<Json<ErasedOut>, ApiError> {
    let id: EventId = id.parse().map_err(|e: InvalidValue| ApiError::BadRequest(e.0))?;
    erase(&state, EventRef::Id(id)).await
}

#[utoipa::path(
    delete,
    path = "/v1/events/payload",
    tag = "events",
    summary = "Erase the payload of an event named by the producer's idempotency key",
    description = "As `DELETE /v1/events/{id}/payload`, for the event first accepted with `idempotency_key`. \
                   `404` when the key is unknown, or its event was already removed by retention.",
    params(EraseByKeyQuery),
    responses(
        (status = 200, description = "Erased (now or before)", body = ErasedOut),
        (status = 400, description = "No valid `idempotency_key` parameter", body = openapi::ErrorBody),
        openapi::NeedsAdmin,
        (status = 404, description = "No stored event with this key", body = openapi::ErrorBody),
        (status = 409, description = "A delivery is not final yet (named in the error)", body = openapi::ErrorBody),
        (status = 415, description = "A body was sent that is not `application/json`", body = openapi::ErrorBody),
        openapi::StoreFailure,
    ),
    security(("bearer" = ["admin"]), ()),
)]
pub(super) async fn erase_payload_by_key(
    State(state): State<Arc<AppState>>,
    query: Result<axum::extract::Query<EraseByKeyQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<ErasedOut>, ApiError> {
    let axum::extract::Query(q) = query.map_err(|e| ApiError::BadRequest(e.body_text()))?;
    erase(&state, EventRef::ProducerKey(q.idempotency_key)).await
}
