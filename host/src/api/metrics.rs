//! `GET /metrics`: reads the scrape-time figures (deliveries per status, lag, manual pauses,
//! breakers, loaded targets) and serves `telemetry::metrics` in the OpenMetrics text format;
//! and the middleware that times the ingest route.

use std::sync::Arc;

use axum::extract::State;
use axum::http::header::CONTENT_TYPE;
use axum::response::{IntoResponse, Response};

use super::{ApiError, AppState, openapi};
use crate::domain::now_ms;
use crate::store::StoreError;
use crate::telemetry::metrics::{self, BreakerGauge, Scrape};

/// The content type of `GET /metrics`.
pub const CONTENT_TYPE_OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Middleware around the ingest route: records its latency, refusals included.
pub async fn time_ingest(request: axum::extract::Request, next: axum::middleware::Next) -> Response {
    let started = std::time::Instant::now();
    let response = next.run(request).await;
    metrics::ingest_request(started.elapsed());
    response
}

/// The figures read at scrape time, from the store, the registry and the breakers.
async fn scrape(state: &AppState) -> Result<Scrape, StoreError> {
    let now = now_ms();
    let snapshot = state.registry.snapshot();
    let mut input = Scrape {
        counts: state.store.status_counts().await?,
        oldest_due: state.store.oldest_due(now).await?,
        paused: state.store.paused_targets().await?,
        loaded: snapshot.targets.keys().map(|n| n.to_string()).collect(),
        reload_errors: snapshot.errors.len(),
        breakers: Default::default(),
        limits: Default::default(),
        paces: Default::default(),
        now,
    };
    for target in input.targets() {
        if let Some(flow) = state.flows.status(&target) {
            input.limits.insert(target.clone(), flow.limit);
            if let Some(pace) = flow.pace {
                input.paces.insert(target.clone(), pace);
            }
        }
        if let Some(b) = state.breakers.status(&target) {
            input.breakers.insert(
                target,
                BreakerGauge {
                    state: b.state,
                    consecutive_failures: b.consecutive_failures,
                },
            );
        }
    }
    Ok(input)
}

/// `GET /metrics`.
#[utoipa::path(
    get,
    path = "/metrics",
    tag = "operations",
    summary = "Prometheus metrics",
    description = "Every metric in the OpenMetrics text format (Prometheus scrapes it as is).",
    responses(
        (status = 200, description = "The metrics", content_type = "application/openmetrics-text", body = String),
        openapi::NeedsRead,
        openapi::StoreFailure,
    ),
    security(("bearer" = ["read"]), ()),
)]
pub async fn get_metrics(State(state): State<Arc<AppState>>) -> Result<Response, ApiError> {
    let input = scrape(&state).await?;
    let text = metrics::render(&input)
        .map_err(|e| ApiError::Store(StoreError::Task(format!("cannot encode metrics: {e}"))))?;
    Ok(([(CONTENT_TYPE, CONTENT_TYPE_OPENMETRICS)], text).into_response())
}
