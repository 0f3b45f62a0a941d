//! The HTTP API: ingest (`POST /v1/events`), event status (`GET /v1/events/{id}`), targets
//! (`GET /v1/targets`) and liveness (`GET /healthz`). Every error is a JSON body
//! `{"error": "…"}` with a 4xx or 5xx status, and a refused request stores nothing.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::Json;
use axum::Router;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde::Serialize;
use serde_json::value::RawValue;
use thiserror::Error;
use tokio::sync::Notify;

use crate::domain::{DeliveryStatus, EventId, format_ms, now_ms};
use crate::ingest::{self, Batch, IngestError};
use crate::store::{EventDetail, Ingested, Store, StoreError};
use crate::targets::Registry;

/// What the handlers share.
pub struct AppState {
    pub store: Arc<dyn Store>,
    pub registry: Arc<Registry>,
    /// Notified after every ingest, to wake idle dispatcher lanes.
    pub wake: Arc<Notify>,
    pub max_payload_bytes: usize,
    pub max_request_bytes: usize,
}

/// The API router.
pub fn router(state: Arc<AppState>) -> Router {
    let limit = state.max_request_bytes;
    Router::new()
        .route("/v1/events", post(post_events))
        .route("/v1/events/{id}", get(get_event))
        .route("/v1/targets", get(get_targets))
        .route("/healthz", get(healthz))
        .fallback(|| async { ApiError::NotFound("no such endpoint".into()) })
        .layer(DefaultBodyLimit::max(limit))
        .with_state(state)
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
            ApiError::Store(e) => {
                tracing::error!(error = %e, "store failure while serving a request");
                StatusCode::SERVICE_UNAVAILABLE
            }
        };
        (status, Json(serde_json::json!({ "error": self.to_string() }))).into_response()
    }
}

#[derive(Serialize)]
struct IngestedOut {
    id: String,
    duplicate: bool,
}

impl From<Ingested> for IngestedOut {
    fn from(i: Ingested) -> Self {
        Self {
            id: i.id.to_string(),
            duplicate: i.duplicate,
        }
    }
}

async fn post_events(
    State(state): State<Arc<AppState>>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
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
    let batch = ingest::parse(&body, state.max_payload_bytes)?;
    let single = matches!(batch, Batch::One(_));
    let events = ingest::route(batch.into_vec(), &state.registry.snapshot().routes);
    let ingested = state.store.ingest(events, now_ms()).await?;
    state.wake.notify_waiters();
    let status = if ingested.iter().any(|i| !i.duplicate) {
        StatusCode::ACCEPTED
    } else {
        StatusCode::OK
    };
    let out: Vec<IngestedOut> = ingested.into_iter().map(Into::into).collect();
    Ok(if single {
        (status, Json(out.into_iter().next())).into_response()
    } else {
        (status, Json(out)).into_response()
    })
}

#[derive(Serialize)]
struct AttemptOut {
    n: u32,
    started_at: String,
    duration_ms: Option<u64>,
    outcome: &'static str,
    error: Option<String>,
    plugin_hash: Option<String>,
}

#[derive(Serialize)]
struct DeliveryOut {
    target: String,
    status: &'static str,
    attempts: u32,
    last_error: Option<String>,
    next_attempt_at: Option<String>,
    delivered_at: Option<String>,
    idempotency_key: String,
    history: Vec<AttemptOut>,
}

#[derive(Serialize)]
struct EventOut {
    id: String,
    #[serde(rename = "type")]
    event_type: String,
    payload: Box<RawValue>,
    headers: BTreeMap<String, String>,
    idempotency_key: Option<String>,
    created_at: String,
    deliveries: Vec<DeliveryOut>,
}

fn event_out(d: EventDetail) -> Result<EventOut, ApiError> {
    let e = d.event;
    let payload = RawValue::from_string(e.payload).map_err(|err| StoreError::Corrupt(err.to_string()))?;
    Ok(EventOut {
        id: e.id.to_string(),
        event_type: e.event_type,
        payload,
        headers: e.headers.into_iter().collect(),
        idempotency_key: e.idempotency_key,
        created_at: format_ms(e.created_at),
        deliveries: d
            .deliveries
            .into_iter()
            .map(|del| DeliveryOut {
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
                    })
                    .collect(),
            })
            .collect(),
    })
}

async fn get_event(State(state): State<Arc<AppState>>, Path(id): Path<String>) -> Result<Json<EventOut>, ApiError> {
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

#[derive(Serialize)]
struct TargetOut {
    name: String,
    /// Whether a plugin is loaded for it; `false` for a name that only has deliveries.
    loaded: bool,
    plugin: Option<String>,
    hash: Option<String>,
    loaded_at: Option<String>,
    events: Vec<String>,
    timeout_ms: Option<u64>,
    concurrency: Option<u32>,
    allowed_hosts: Vec<String>,
    counts: BTreeMap<&'static str, u64>,
}

async fn get_targets(State(state): State<Arc<AppState>>) -> Result<Json<Vec<TargetOut>>, ApiError> {
    let snapshot = state.registry.snapshot();
    let mut counts = state.store.status_counts().await?;
    let zeroed = || {
        DeliveryStatus::ALL
            .iter()
            .map(|s| (s.as_str(), 0))
            .collect::<BTreeMap<_, _>>()
    };
    let with_counts = |name: &str, counts: &mut crate::store::StatusCounts| {
        let mut c = zeroed();
        for (status, n) in counts.remove(name).unwrap_or_default() {
            c.insert(status.as_str(), n);
        }
        c
    };
    let mut out: Vec<TargetOut> = snapshot
        .targets
        .values()
        .map(|t| TargetOut {
            name: t.spec.name.to_string(),
            loaded: true,
            plugin: t.spec.plugin_path.file_name().map(|f| f.to_string_lossy().into_owned()),
            hash: Some(t.plugin.hash().to_owned()),
            loaded_at: Some(format_ms(t.loaded_at)),
            events: t.spec.events.iter().map(|p| p.to_string()).collect(),
            timeout_ms: Some(t.spec.timeout.as_millis() as u64),
            concurrency: Some(t.spec.concurrency),
            allowed_hosts: t.spec.allowed_hosts.clone(),
            counts: with_counts(t.spec.name.as_str(), &mut counts),
        })
        .collect();
    let leftover: Vec<String> = counts.keys().cloned().collect();
    for name in leftover {
        out.push(TargetOut {
            counts: with_counts(&name, &mut counts),
            name,
            loaded: false,
            plugin: None,
            hash: None,
            loaded_at: None,
            events: Vec::new(),
            timeout_ms: None,
            concurrency: None,
            allowed_hosts: Vec::new(),
        });
    }
    Ok(Json(out))
}

async fn healthz(State(state): State<Arc<AppState>>) -> Json<serde_json::Value> {
    Json(serde_json::json!({
        "status": "ok",
        "targets": state.registry.snapshot().targets.len(),
    }))
}
