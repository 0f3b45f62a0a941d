//! The HTTP API: ingest (`POST /v1/events`), event search (`GET /v1/events`, in `search`),
//! event status (`GET /v1/events/{id}`),
//! cancellation (`POST /v1/events/{id}/cancel`, `POST /v1/events/cancel`, in `cancel`), payload
//! erasure (`DELETE /v1/events/{id}/payload`, `DELETE /v1/events/payload`, in `erase`), targets
//! (`GET /v1/targets`, `POST /v1/targets/{name}/pause|resume`), dead letters
//! (`GET /v1/deliveries/failed`; replays and replay jobs in `replays`), sources (`GET /v1/sources`),
//! the dashboard's history (`GET /v1/history`, in `history`), liveness (`GET /healthz`) and readiness (`GET /readyz`, in `ready`).
//! Every error is a JSON body `{"error": "…"}` with a 4xx or 5xx status, and a refused
//! request changes nothing.
//!
//! Submodules: `auth` (tokens and scopes), `metrics` (`GET /metrics`), `sources` (`GET
//! /v1/sources`), `openapi` (the
//! OpenAPI document, `GET /v1/openapi.json`, built from the `#[utoipa::path]` annotations
//! of the handlers here) and `dashboard` (the web page at `/`).

pub mod auth;
pub mod browser;
mod cancel;
pub mod dashboard;
mod erase;
mod history;
pub mod metrics;
pub mod openapi;
mod ready;
mod replays;
mod search;
pub mod sources;
mod targets;

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::Json;
use axum::Router;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use thiserror::Error;
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::dispatch::breakers::Breakers;
use crate::dispatch::flow::Flows;
use crate::domain::{DeliveryStatus, EventId, InvalidValue, ReceiverResponse, format_ms, now_ms, parse_time};
use crate::outbox::input::{self, Batch, IngestError};
use crate::outbox::{Origin, Outbox};
use crate::store::{EventDetail, FailedFilter, Ingested, Store, StoreError};
use crate::targets::Registry;
use crate::telemetry::trace_context::TraceParent;

mod extract;
use extract::PathParam;

/// What the handlers share.
pub struct AppState {
    pub store: Arc<dyn Store>,
    pub registry: Arc<Registry>,
    /// Circuit breakers, for `GET /v1/targets`.
    pub breakers: Arc<Breakers>,
    /// Each target's concurrency limit and retry budget, for `GET /v1/targets` and metrics.
    pub flows: Arc<Flows>,
    /// The front door: ingest goes through it; replays and resumes wake lanes through it.
    pub outbox: Outbox,
    /// Tells the replay worker (`crate::replay`) that a job was created.
    pub replay_kick: Arc<tokio::sync::Notify>,
    /// Relay status of every `[[sources]]` entry, for `GET /v1/sources`.
    pub sources: Arc<crate::source::Sources>,
    pub max_payload_bytes: usize,
    pub max_request_bytes: usize,
    /// Tokens and scopes (`[api]`), as last (re)loaded.
    pub auth: auth::LiveAuth,
    /// The `Host` values the API answers to (`[api] allowed_hosts`).
    pub hosts: Arc<browser::HostRules>,
    /// A request that takes longer is answered `408` (`[api] request_timeout_ms`).
    pub request_timeout: std::time::Duration,
}

/// The documented API, grouped by the scope a token needs for it. Every route goes through
/// `routes!` so that it is in the OpenAPI document.
pub fn api_routes(auth: auth::LiveAuth) -> OpenApiRouter<Arc<AppState>> {
    let guarded = |scope, routes: OpenApiRouter<Arc<AppState>>| {
        routes.route_layer(axum::middleware::from_fn_with_state(
            auth::Guard::new(auth.clone(), scope),
            auth::require,
        ))
    };
    let ingest = OpenApiRouter::new()
        .routes(routes!(post_events))
        .route_layer(axum::middleware::from_fn(metrics::time_ingest));
    let read = OpenApiRouter::new()
        .routes(routes!(get_event))
        .routes(routes!(targets::get_targets))
        .routes(routes!(list_failed))
        .routes(routes!(sources::get_sources))
        .routes(routes!(history::get_history))
        .routes(routes!(search::search_events))
        .routes(routes!(healthz))
        .routes(routes!(ready::readyz))
        .routes(routes!(metrics::get_metrics));
    let admin = OpenApiRouter::new()
        .routes(routes!(targets::pause_target))
        .routes(routes!(targets::resume_target))
        .routes(routes!(replays::replay))
        .routes(routes!(replays::list_replays))
        .routes(routes!(replays::get_replay))
        .routes(routes!(replays::cancel_replay))
        .routes(routes!(cancel::cancel_event))
        .routes(routes!(cancel::cancel_by_key))
        .routes(routes!(erase::erase_event_payload))
        .routes(routes!(erase::erase_payload_by_key));
    OpenApiRouter::with_openapi(openapi::base())
        .merge(guarded(auth::Scope::Ingest, ingest))
        .merge(guarded(auth::Scope::Read, read))
        .merge(guarded(auth::Scope::Admin, admin))
}

/// The API router: the documented API, its document, and the dashboard.
pub fn router(state: Arc<AppState>) -> Router {
    let limit = state.max_request_bytes;
    let hosts = Arc::clone(&state.hosts);
    let timeout = state.request_timeout;
    let (api, doc) = api_routes(state.auth.clone()).split_for_parts();
    api.merge(openapi::router(doc))
        .merge(dashboard::router())
        .fallback(|| async { ApiError::NotFound("no such endpoint".into()) })
        .method_not_allowed_fallback(|| async { ApiError::MethodNotAllowed })
        .layer(DefaultBodyLimit::max(limit))
        .layer(axum::middleware::from_fn_with_state(hosts, browser::guard))
        .layer(axum::middleware::from_fn(
            move |request: axum::extract::Request, next: axum::middleware::Next| within(timeout, request, next),
        ))
        .with_state(state)
}

/// Answers `408` when serving a request (reading its body included) takes over `limit`.
async fn within(limit: std::time::Duration, request: axum::extract::Request, next: axum::middleware::Next) -> Response {
    match tokio::time::timeout(limit, next.run(request)).await {
        Ok(response) => response,
        Err(_) => (
            StatusCode::REQUEST_TIMEOUT,
            Json(serde_json::json!({
                "error": format!("the request was not finished within {} ms", limit.as_millis())
            })),
        )
            .into_response(),
    }
}

/// An API failure, rendered as `{"error": "…"}`.
#[derive(Debug, Error)]
pub enum ApiError {
    #[error("{0}")]
    BadRequest(String),
    #[error("{0}")]
    TooLarge(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Conflict(String),
    #[error("method not allowed on this endpoint")]
    MethodNotAllowed,
    #[error("{0}")]
    Store(#[from] StoreError),
}

impl From<IngestError> for ApiError {
    fn from(e: IngestError) -> Self {
        match e {
            IngestError::Invalid(m) => ApiError::BadRequest(m),
            IngestError::TooLarge(m) => ApiError::TooLarge(m),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = match &self {
            ApiError::BadRequest(_) => StatusCode::BAD_REQUEST,
            ApiError::TooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::NotFound(_) => StatusCode::NOT_FOUND,
            ApiError::Conflict(_) => StatusCode::CONFLICT,
            ApiError::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            ApiError::Store(e) => {
                tracing::error!(error = %e, "store failure while serving a request");
                StatusCode::SERVICE_UNAVAILABLE
            }
        };
        (status, Json(serde_json::json!({ "error": self.to_string() }))).into_response()
    }
}

/// What ingesting one event did.
#[derive(Serialize, ToSchema)]
pub(crate) struct IngestedOut {
    /// The event's id (UUIDv7): the new one, or the first event's for a known idempotency
    /// key, which is shown only to a caller that may read events (`null` to an ingest-only
    /// token: the key may be another producer's).
    id: Option<String>,
    /// The idempotency key had been seen before: nothing was written.
    duplicate: bool,
}

impl IngestedOut {
    fn of(i: Ingested, caller: auth::Caller) -> Self {
        Self {
            id: (!i.duplicate || caller.may_read).then(|| i.id.to_string()),
            duplicate: i.duplicate,
        }
    }
}

#[utoipa::path(
    post,
    path = "/v1/events",
    tag = "events",
    summary = "Ingest one event or a batch",
    description = "One event object, or an array of 1 to 1000 of them (atomic: one invalid event refuses all). \
                   `202` when anything new was stored, `200` when every event was a duplicate.",
    params(("traceparent" = Option<String>, Header, description = "A W3C Trace Context `traceparent` \
        (`00-<trace id>-<span id>-<flags>`): the events join this trace, and every outbound request of \
        their deliveries carries a child of it. An invalid value is ignored.")),
    request_body(content = openapi::EventsIn, content_type = "application/json"),
    responses(
        (status = 202, description = "Stored (an array answers an array, in order)", body = openapi::IngestedAnswer),
        (status = 200, description = "Every event was a known idempotency key", body = openapi::IngestedAnswer),
        (status = 400, description = "Invalid input; nothing stored", body = openapi::ErrorBody),
        openapi::NeedsIngest,
        (status = 413, description = "Payload or request too large", body = openapi::ErrorBody),
        (status = 415, description = "The body is not `application/json`", body = openapi::ErrorBody),
        openapi::StoreFailure,
    ),
    security(("bearer" = ["ingest"]), ()),
)]
async fn post_events(
    State(state): State<Arc<AppState>>,
    caller: Option<axum::Extension<auth::Caller>>,
    headers: axum::http::HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let caller = caller.map_or(auth::Caller { may_read: false }, |c| c.0);
    // The producer's W3C trace context: every event of the request joins it. A value that is
    // not a valid `traceparent` is ignored, as a tracer would (the events are still accepted).
    let traceparent = headers
        .get("traceparent")
        .and_then(|v| v.to_str().ok())
        .and_then(TraceParent::parse);
    let body = body.map_err(|e| {
        if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::TooLarge(format!(
                "the request body is over the limit of {} bytes",
                state.max_request_bytes
            ))
        } else {
            ApiError::BadRequest(e.body_text())
        }
    })?;
    let batch = input::parse_from_producer(&body, state.max_payload_bytes)?;
    let single = matches!(batch, Batch::One(_));
    let mut events = batch.into_vec();
    for e in &mut events {
        e.traceparent = traceparent;
    }
    let ingested = state.outbox.accept(events, Origin::Api).await?;
    let status = if ingested.iter().any(|i| !i.duplicate) {
        StatusCode::ACCEPTED
    } else {
        StatusCode::OK
    };
    let out: Vec<IngestedOut> = ingested.into_iter().map(|i| IngestedOut::of(i, caller)).collect();
    Ok(if single {
        (status, Json(out.into_iter().next())).into_response()
    } else {
        (status, Json(out)).into_response()
    })
}

/// One attempt of a delivery.
#[derive(Serialize, ToSchema)]
struct AttemptOut {
    /// History number: keeps counting across replays.
    n: u32,
    started_at: String,
    duration_ms: Option<u64>,
    /// `running`, `delivered`, `retry`, `permanent` or `abandoned`.
    #[schema(value_type = String)]
    outcome: &'static str,
    error: Option<String>,
    plugin_hash: Option<String>,
    /// What the receiver answered to this attempt; `null` while it runs, when it was abandoned,
    /// or when no request of it got an answer (a timeout, a refused connection).
    response: Option<ResponseOut>,
    /// What the plugin attached to this attempt itself (`report.detail`, contract 0.1.1): at most
    /// a KiB of text, ending with `… [cut from N bytes]` when it was longer; `null` when it
    /// attached nothing.
    detail: Option<String>,
}

/// What a receiver answered to an attempt: the HTTP status of the last response the plugin
/// received (through the host) during the attempt, and the beginning of its body.
#[derive(Serialize, ToSchema)]
pub(crate) struct ResponseOut {
    /// HTTP status code.
    #[schema(minimum = 0, maximum = 65535)]
    status: u16,
    /// The first KiB of the body as the receiver sent it (UTF-8; a byte that is not, as U+FFFD),
    /// ending with `… [cut from N bytes]` when the body was longer.
    body: String,
}

impl From<ReceiverResponse> for ResponseOut {
    fn from(r: ReceiverResponse) -> Self {
        Self {
            status: r.status,
            body: r.body,
        }
    }
}

/// One delivery of an event, with its attempt history.
#[derive(Serialize, ToSchema)]
struct DeliveryOut {
    target: String,
    /// `pending`, `in_flight`, `delivered`, `dead`, `discarded`, `paused` or `cancelled`.
    #[schema(value_type = String)]
    status: &'static str,
    attempts: u32,
    last_error: Option<String>,
    next_attempt_at: Option<String>,
    /// Waiting for the time its event was scheduled for (`deliver_at` or `delay_ms`): pending,
    /// never attempted, due later.
    scheduled: bool,
    delivered_at: Option<String>,
    idempotency_key: String,
    history: Vec<AttemptOut>,
}

/// An event with its deliveries.
#[derive(Serialize, ToSchema)]
struct EventOut {
    id: String,
    #[serde(rename = "type")]
    event_type: String,
    /// The payload exactly as sent; `null` once erased (`erased_at`).
    #[schema(value_type = serde_json::Value)]
    payload: Option<Box<RawValue>>,
    /// The headers; none once the payload was erased.
    headers: BTreeMap<String, String>,
    idempotency_key: Option<String>,
    created_at: String,
    /// When the payload and headers were erased (`DELETE /v1/events/{id}/payload`, or
    /// `payload_retention`); `null` while they are kept.
    erased_at: Option<String>,
    /// The W3C `traceparent` its deliveries' requests are children of (the producer's, or
    /// outboxd's ingest span when it exports traces); `null` for an untraced event.
    traceparent: Option<String>,
    deliveries: Vec<DeliveryOut>,
}

fn event_out(d: EventDetail) -> Result<EventOut, ApiError> {
    let now = now_ms();
    let e = d.event;
    let payload = match d.erased_at {
        Some(_) => None,
        None => Some(RawValue::from_string(e.payload).map_err(|err| StoreError::Corrupt(err.to_string()))?),
    };
    Ok(EventOut {
        id: e.id.to_string(),
        event_type: e.event_type,
        payload,
        headers: e.headers.into_iter().collect(),
        idempotency_key: e.idempotency_key,
        created_at: format_ms(e.created_at),
        erased_at: d.erased_at.map(format_ms),
        traceparent: e.traceparent.map(|t| t.to_string()),
        deliveries: d
            .deliveries
            .into_iter()
            .map(|del| DeliveryOut {
                scheduled: del.status == DeliveryStatus::Pending
                    && del.attempts == 0
                    && del.next_attempt_at.is_some_and(|at| at > now),
                idempotency_key: crate::domain::delivery_key(&e.id, &del.target),
                target: del.target.to_string(),
                status: del.status.as_str(),
                attempts: del.attempts,
                last_error: del.last_error,
                next_attempt_at: del.next_attempt_at.map(format_ms),
                delivered_at: del.delivered_at.map(format_ms),
                history: del
                    .history
                    .into_iter()
                    .map(|h| AttemptOut {
                        n: h.n,
                        started_at: format_ms(h.started_at),
                        duration_ms: h.duration_ms,
                        outcome: h.outcome.as_str(),
                        error: h.error,
                        plugin_hash: h.plugin_hash,
                        response: h.response.map(ResponseOut::from),
                        detail: h.detail,
                    })
                    .collect(),
            })
            .collect(),
    })
}

#[utoipa::path(
    get,
    path = "/v1/events/{id}",
    tag = "events",
    summary = "An event, its deliveries and their attempt history",
    params(("id" = String, Path, description = "The event id (a UUID)", pattern = "^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$")),
    responses(
        (status = 200, description = "The event", body = EventOut),
        (status = 400, description = "Not a UUID", body = openapi::ErrorBody),
        openapi::NeedsRead,
        (status = 404, description = "No such event", body = openapi::ErrorBody),
        openapi::StoreFailure,
    ),
    security(("bearer" = ["read"]), ()),
)]
async fn get_event(State(state): State<Arc<AppState>>, PathParam(id): PathParam) -> Result<Json<EventOut>, ApiError> {
    let id: EventId = id
        .parse()
        .map_err(|e: crate::domain::InvalidValue| ApiError::BadRequest(e.0))?;
    let detail = state
        .store
        .event(id)
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("no event with id {id}")))?;
    Ok(Json(event_out(detail)?))
}

/// A failed-delivery filter as the API takes it (query string or JSON body).
#[derive(Debug, Default, Deserialize, ToSchema, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct FilterIn {
    /// `dead` or `discarded`; both when absent.
    #[schema(pattern = "^(dead|discarded)$")]
    #[param(pattern = "^(dead|discarded)$")]
    pub status: Option<String>,
    /// A target name.
    #[schema(pattern = "^[a-z0-9][a-z0-9_-]{0,63}$")]
    #[param(pattern = "^[a-z0-9][a-z0-9_-]{0,63}$")]
    pub target: Option<String>,
    /// Event-type glob (letters, digits, `.`, `_`, `-`, `:`, and the wildcards `*` and `?`).
    #[schema(pattern = "^[A-Za-z0-9._:*?-]{1,255}$")]
    #[param(pattern = "^[A-Za-z0-9._:*?-]{1,255}$")]
    pub event_type: Option<String>,
    /// Epoch milliseconds (RFC 3339 is accepted too): failed at or after.
    #[schema(pattern = "^[0-9]{1,15}$")]
    #[param(pattern = "^[0-9]{1,15}$")]
    pub since: Option<String>,
    /// Epoch milliseconds (RFC 3339 is accepted too): failed before.
    #[schema(pattern = "^[0-9]{1,15}$")]
    #[param(pattern = "^[0-9]{1,15}$")]
    pub until: Option<String>,
    /// Text the last error contains (case-insensitive); no NUL characters, which PostgreSQL's
    /// text cannot hold.
    #[schema(pattern = "^[^\\x00]*$")]
    #[param(pattern = "^[^\\x00]*$")]
    pub error: Option<String>,
    /// Only these deliveries (JSON bodies only: a query string cannot carry a list).
    #[serde(default, deserialize_with = "crate::whole::whole_list")]
    #[schema(schema_with = crate::whole::whole_list_schema)]
    #[param(ignore)]
    pub delivery_ids: Vec<i64>,
    /// Only deliveries with an id above this: the listing's paging, or where a replay starts.
    #[serde(default, deserialize_with = "crate::whole::opt_whole")]
    #[schema(minimum = 0, maximum = 9007199254740991_i64)]
    #[param(minimum = 0, maximum = 9007199254740991_i64)]
    pub after: Option<i64>,
    /// At most this many: a page of the listing (default 100, at most 1000), or a cap on
    /// the replay (default 1000; see `all`).
    #[serde(default, deserialize_with = "crate::whole::opt_whole")]
    #[schema(minimum = 1, maximum = 9007199254740991_i64)]
    #[param(minimum = 1, maximum = 1000)]
    pub limit: Option<usize>,
    /// Replay only: take every match that failed before the request (without it, a replay
    /// takes at most `limit`, or 1000).
    #[param(ignore)]
    pub all: Option<bool>,
}

impl FilterIn {
    /// Validates into a store filter.
    pub fn into_filter(self) -> Result<FailedFilter, InvalidValue> {
        let statuses = match self.status.as_deref() {
            None => Vec::new(),
            Some(s) => {
                let status: DeliveryStatus = s.parse()?;
                if !matches!(status, DeliveryStatus::Dead | DeliveryStatus::Discarded) {
                    return Err(InvalidValue(format!(
                        "`status` must be `dead` or `discarded`, not `{s}`"
                    )));
                }
                vec![status]
            }
        };
        if let Some(t) = &self.event_type {
            t.parse::<crate::targets::routing::Pattern>()?;
        }
        if self.error.as_deref().is_some_and(|e| e.contains('\0')) {
            return Err(InvalidValue("`error` must not contain NUL characters".into()));
        }
        Ok(FailedFilter {
            statuses,
            target: self.target.map(|t| t.parse()).transpose()?,
            event_type: self.event_type,
            since: self.since.as_deref().map(parse_time).transpose()?,
            until: self.until.as_deref().map(parse_time).transpose()?,
            error_contains: self.error,
            delivery_ids: self.delivery_ids,
            id_range: None,
        })
    }
}

/// A failed (dead or discarded) delivery.
#[derive(Serialize, ToSchema)]
pub(crate) struct FailedOut {
    delivery_id: i64,
    event_id: String,
    event_type: String,
    target: String,
    /// `dead` or `discarded`.
    #[schema(value_type = String)]
    status: &'static str,
    attempts: u32,
    last_error: Option<String>,
    failed_at: String,
    /// What the receiver answered to the last attempt, if it answered.
    last_response: Option<ResponseOut>,
}

#[utoipa::path(
    get,
    path = "/v1/deliveries/failed",
    tag = "dead letters",
    summary = "Dead and discarded deliveries, oldest first, paged",
    params(FilterIn),
    responses(
        (status = 200, description = "One page", body = openapi::FailedPage),
        (status = 400, description = "Invalid filter", body = openapi::ErrorBody),
        openapi::NeedsRead,
        openapi::StoreFailure,
    ),
    security(("bearer" = ["read"]), ()),
)]
async fn list_failed(
    State(state): State<Arc<AppState>>,
    query: Result<axum::extract::Query<FilterIn>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let axum::extract::Query(q) = query.map_err(|e| ApiError::BadRequest(e.body_text()))?;
    if q.all.is_some() {
        return Err(ApiError::BadRequest("`all` is for the replay only".into()));
    }
    let (after, limit) = extract::paging(q.after, q.limit, 100, 1000)?;
    let filter = q.into_filter().map_err(|e| ApiError::BadRequest(e.0))?;
    let rows = state.store.list_failed(filter, after, limit).await?;
    let next_after = (rows.len() == limit)
        .then(|| rows.last().map(|r| r.delivery_id))
        .flatten();
    let deliveries: Vec<FailedOut> = rows
        .into_iter()
        .map(|r| FailedOut {
            delivery_id: r.delivery_id,
            event_id: r.event_id.to_string(),
            event_type: r.event_type,
            target: r.target.to_string(),
            status: r.status.as_str(),
            attempts: r.attempts,
            last_error: r.last_error,
            failed_at: format_ms(r.failed_at),
            last_response: r.last_response.map(ResponseOut::from),
        })
        .collect();
    Ok(Json(
        serde_json::json!({ "deliveries": deliveries, "next_after": next_after }),
    ))
}

/// `200` in both cases: `ok`, or `degraded` with the files that did not load and the
/// targets held because of them. A degraded host still accepts and delivers for every other
/// target, so it must not be taken out of a load balancer's rotation.
#[utoipa::path(
    get,
    path = "/healthz",
    tag = "operations",
    summary = "Liveness, and the number of loaded targets",
    responses(
        (status = 200, description = "Up: `ok`, or `degraded` with the files that did not load and the targets held because of them", body = openapi::HealthOut),
        (status = 401, description = "A token is required (unless `/healthz` is in `[api] open`)", body = openapi::ErrorBody),
        (status = 403, description = "The token lacks the `read` scope", body = openapi::ErrorBody),
    ),
    security(("bearer" = ["read"]), ()),
)]
async fn healthz(State(state): State<Arc<AppState>>) -> Json<serde_json::Value> {
    let snapshot = state.registry.snapshot();
    if snapshot.errors.is_empty() {
        return Json(serde_json::json!({
            "status": "ok",
            "targets": snapshot.targets.len(),
        }));
    }
    let errors: Vec<serde_json::Value> = snapshot
        .errors
        .iter()
        .map(|e| {
            // Where and what only: the whole message (in the log) may quote the file's text.
            serde_json::json!({
                "target": e.target.as_ref().map(|t| t.as_str()),
                "file": e.file.display().to_string(),
                "line": e.line,
                "column": e.column,
                "message": e.summary,
                "at": format_ms(e.at),
            })
        })
        .collect();
    Json(serde_json::json!({
        "status": "degraded",
        "targets": snapshot.targets.len(),
        "held": snapshot.held.keys().map(|n| n.as_str()).collect::<Vec<_>>(),
        "errors": errors,
    }))
}
