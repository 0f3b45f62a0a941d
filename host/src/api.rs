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
struct ReloadErrorOut {
    file: String,
    message: String,
    at: String,
}

#[derive(Serialize, Default)]
struct TargetOut {
    name: String,
    /// Whether a plugin is loaded for it; `false` for a target that only has deliveries
    /// (its files were removed) or whose files have never loaded.
    loaded: bool,
    plugin: Option<String>,
    /// Content hash (SHA-256) of the plugin version serving now.
    hash: Option<String>,
    loaded_at: Option<String>,
    /// Whether the serving version was compiled or came from the compile cache.
    compiled_from: Option<&'static str>,
    events: Vec<String>,
    timeout_ms: Option<u64>,
    concurrency: Option<u32>,
    allowed_hosts: Vec<String>,
    /// Deliveries per status.
    counts: BTreeMap<&'static str, u64>,
    /// Attempts run by each plugin version (content hash), over the store's lifetime.
    versions: BTreeMap<String, u64>,
    /// Why the target's files could not be loaded at the last reload; the previous version,
    /// if any, keeps serving meanwhile. `null` once a good file is in place.
    last_reload_error: Option<ReloadErrorOut>,
}

async fn get_targets(State(state): State<Arc<AppState>>) -> Result<Json<Vec<TargetOut>>, ApiError> {
    let snapshot = state.registry.snapshot();
    let mut counts = state.store.status_counts().await?;
    let mut versions = state.store.version_attempts().await?;
    let mut names: std::collections::BTreeSet<String> = snapshot.targets.keys().map(|n| n.to_string()).collect();
    names.extend(counts.keys().cloned());
    names.extend(
        snapshot
            .errors
            .iter()
            .filter_map(|e| e.target.as_ref().map(|t| t.to_string())),
    );
    let out = names
        .into_iter()
        .map(|name| {
            let mut t = TargetOut {
                counts: DeliveryStatus::ALL.iter().map(|s| (s.as_str(), 0)).collect(),
                ..TargetOut::default()
            };
            for (status, n) in counts.remove(&name).unwrap_or_default() {
                t.counts.insert(status.as_str(), n);
            }
            t.versions = versions.remove(&name).unwrap_or_default();
            t.last_reload_error = snapshot
                .errors
                .iter()
                .rfind(|e| e.target.as_ref().is_some_and(|n| n.as_str() == name))
                .map(|e| ReloadErrorOut {
                    file: e.file.display().to_string(),
                    message: e.message.clone(),
                    at: format_ms(e.at),
                });
            if let Some(live) = name.parse().ok().and_then(|n| snapshot.targets.get(&n)) {
                let spec = &live.spec;
                t.loaded = true;
                t.plugin = spec.plugin_path.file_name().map(|f| f.to_string_lossy().into_owned());
                t.hash = Some(live.plugin.hash().to_owned());
                t.loaded_at = Some(format_ms(live.loaded_at));
                t.compiled_from = Some(if live.plugin.from_cache() { "cache" } else { "compile" });
                t.events = spec.events.iter().map(|p| p.to_string()).collect();
                t.timeout_ms = Some(spec.timeout.as_millis() as u64);
                t.concurrency = Some(spec.concurrency);
                t.allowed_hosts = spec.allowed_hosts.clone();
            }
            t.name = name;
            t
        })
        .collect();
    Ok(Json(out))
}

async fn healthz(State(state): State<Arc<AppState>>) -> Json<serde_json::Value> {
    Json(serde_json::json!({
        "status": "ok",
        "targets": state.registry.snapshot().targets.len(),
    }))
}
