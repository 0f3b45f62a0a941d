//! `GET /v1/events`: searching events by type, idempotency key, delivery status, target and
//! time, newest first, a page at a time (keyset paging by event id: `before`). Each event
//! comes with its deliveries' statuses; `GET /v1/events/{id}` has its whole history.

use std::sync::Arc;

use axum::Json;
use axum::extract::State;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use super::{ApiError, AppState, openapi};
use crate::domain::{DeliveryStatus, EventId, InvalidValue, format_ms, parse_time};
use crate::store::{EventFilter, EventSummary};

/// A page when the request names no `limit`.
pub const DEFAULT_LIMIT: usize = 50;
/// The largest page.
pub const MAX_LIMIT: usize = 200;

/// What to search for; every field narrows the result.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub(super) struct SearchIn {
    /// Event-type glob (letters, digits, `.`, `_`, `-`, `:`, and the wildcards `*` and `?`).
    #[serde(rename = "type")]
    #[param(rename = "type", pattern = "^[A-Za-z0-9._:*?-]{1,255}$")]
    event_type: Option<String>,
    /// The producer's idempotency key, exactly (found while the idempotency ledger keeps it:
    /// `idempotency_retention`); no NUL characters.
    #[param(pattern = "^[^\\x00]*$")]
    key: Option<String>,
    /// Only events with a delivery in this status (to `target`, when given).
    #[param(pattern = "^(pending|in_flight|delivered|dead|discarded|paused|cancelled)$")]
    status: Option<String>,
    /// Only events with a delivery to this target.
    #[param(pattern = "^[a-z0-9][a-z0-9_-]{0,63}$")]
    target: Option<String>,
    /// Epoch milliseconds (RFC 3339 is accepted too): accepted at or after.
    #[param(pattern = "^[0-9]{1,15}$")]
    since: Option<String>,
    /// Epoch milliseconds (RFC 3339 is accepted too): accepted before.
    #[param(pattern = "^[0-9]{1,15}$")]
    until: Option<String>,
    /// Only events older than this one: the `next_before` of the previous page.
    #[param(pattern = "^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$")]
    before: Option<String>,
    /// At most this many (default 50, at most 200).
    #[serde(default, deserialize_with = "crate::whole::opt_whole")]
    #[param(minimum = 1, maximum = 200)]
    limit: Option<usize>,
}

impl SearchIn {
    fn into_filter(self) -> Result<(EventFilter, usize), InvalidValue> {
        let limit = match self.limit {
            None => DEFAULT_LIMIT,
            Some(l) if (1..=MAX_LIMIT).contains(&l) => l,
            Some(l) => {
                return Err(InvalidValue(format!(
                    "`limit` must be between 1 and {MAX_LIMIT}, not {l}"
                )));
            }
        };
        if let Some(t) = &self.event_type {
            t.parse::<crate::targets::routing::Pattern>()?;
        }
        if self.key.as_deref().is_some_and(|k| k.contains('\0')) {
            return Err(InvalidValue("`key` must not contain NUL characters".into()));
        }
        let filter = EventFilter {
            event_type: self.event_type,
            key: self.key,
            status: self.status.as_deref().map(str::parse::<DeliveryStatus>).transpose()?,
            target: self.target.map(|t| t.parse()).transpose()?,
            since: self.since.as_deref().map(parse_time).transpose()?,
            until: self.until.as_deref().map(parse_time).transpose()?,
            before: self.before.as_deref().map(str::parse::<EventId>).transpose()?,
        };
        Ok((filter, limit))
    }
}

/// A delivery's target and status.
#[derive(Serialize, ToSchema)]
pub(super) struct DeliveryStatusOut {
    target: String,
    /// `pending`, `in_flight`, `delivered`, `dead`, `discarded`, `paused` or `cancelled`.
    #[schema(value_type = String)]
    status: &'static str,
}

/// An event found.
#[derive(Serialize, ToSchema)]
pub(super) struct EventFoundOut {
    id: String,
    #[serde(rename = "type")]
    event_type: String,
    idempotency_key: Option<String>,
    created_at: String,
    /// Its deliveries, by target.
    deliveries: Vec<DeliveryStatusOut>,
}

impl From<EventSummary> for EventFoundOut {
    fn from(e: EventSummary) -> Self {
        Self {
            id: e.id.to_string(),
            event_type: e.event_type,
            idempotency_key: e.idempotency_key,
            created_at: format_ms(e.created_at),
            deliveries: e
                .deliveries
                .into_iter()
                .map(|(target, status)| DeliveryStatusOut {
                    target: target.to_string(),
                    status: status.as_str(),
                })
                .collect(),
        }
    }
}

/// One page of a search.
#[derive(Serialize, ToSchema)]
pub(super) struct EventsPage {
    /// Newest first.
    events: Vec<EventFoundOut>,
    /// The `before` of the next page when this one is full, else null.
    next_before: Option<String>,
}

#[utoipa::path(
    get,
    path = "/v1/events",
    tag = "events",
    summary = "Search events by type, key, delivery status, target and time, newest first, paged",
    params(SearchIn),
    responses(
        (status = 200, description = "One page", body = EventsPage),
        (status = 400, description = "Invalid search", body = openapi::ErrorBody),
        openapi::NeedsRead,
        openapi::StoreFailure,
    ),
    security(("bearer" = ["read"]), ()),
)]
pub(super) async fn search_events(
    State(state): State<Arc<AppState>>,
    query: Result<axum::extract::Query<SearchIn>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<EventsPage>, ApiError> {
    let axum::extract::Query(q) = query.map_err(|e| ApiError::BadRequest(e.body_text()))?;
    let (filter, limit) = q.into_filter().map_err(|e| ApiError::BadRequest(e.0))?;
    let found = state.store.search_events(filter, limit).await?;
    let next_before = (found.len() == limit)
        .then(|| found.last().map(|e| e.id.to_string()))
        .flatten();
    Ok(Json(EventsPage {
        events: found.into_iter().map(Into::into).collect(),
        next_before,
    }))
}
