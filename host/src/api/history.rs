//! `GET /v1/history`: the dashboard's charts, from the in-memory history of this process
//! (`telemetry::history`): per minute, attempts delivered, retried and failed, their latency
//! p50 and p99, and the backlog, for all targets together and for each.

use std::sync::Arc;

use axum::Json;
use axum::extract::State;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use super::{ApiError, AppState, openapi};
use crate::domain::format_ms;
use crate::telemetry::history::{self, BUCKET_MS, HISTORY_MINUTES, Point};

/// The minutes shown when the request names none.
pub const DEFAULT_MINUTES: usize = 60;

/// How far back.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub(super) struct HistoryIn {
    /// Minutes up to and including the current one (default 60, at most 360).
    #[serde(default, deserialize_with = "crate::whole::opt_whole")]
    #[param(minimum = 1, maximum = 360)]
    minutes: Option<usize>,
}

/// One minute.
#[derive(Serialize, ToSchema)]
pub(super) struct PointOut {
    /// The minute's start (RFC 3339, UTC).
    at: String,
    /// Attempts the receiver took.
    #[schema(minimum = 0)]
    delivered: u64,
    /// Attempts that failed; their delivery goes again later.
    #[schema(minimum = 0)]
    retried: u64,
    /// Attempts that failed for good: their delivery is dead or discarded.
    #[schema(minimum = 0)]
    failed: u64,
    /// Median time of the minute's attempts, in milliseconds (within 13 %); `null` without attempts.
    #[schema(minimum = 0)]
    p50_ms: Option<f64>,
    /// 99th percentile of the minute's attempts, in milliseconds (within 13 %); `null` without attempts.
    #[schema(minimum = 0)]
    p99_ms: Option<f64>,
    /// Deliveries pending, in flight or paused, as last sampled in the minute (every 15 s);
    /// `null` when not sampled (before start-up).
    #[schema(minimum = 0)]
    backlog: Option<u64>,
}

impl From<Point> for PointOut {
    fn from(p: Point) -> Self {
        Self {
            at: format_ms(p.minute),
            delivered: p.delivered,
            retried: p.retried,
            failed: p.failed,
            p50_ms: p.p50_ms,
            p99_ms: p.p99_ms,
            backlog: p.backlog,
        }
    }
}

/// One target's series.
#[derive(Serialize, ToSchema)]
pub(super) struct TargetSeriesOut {
    target: String,
    /// One point per minute, oldest first.
    points: Vec<PointOut>,
}

/// The history of the last minutes.
#[derive(Serialize, ToSchema)]
pub(super) struct HistoryOut {
    /// The width of a point, in milliseconds (60000).
    #[schema(minimum = 0)]
    bucket_ms: u64,
    /// All targets together, one point per minute, oldest first.
    all: Vec<PointOut>,
    /// Each target that has attempts or a backlog sample in this process, by name.
    targets: Vec<TargetSeriesOut>,
}

#[utoipa::path(
    get,
    path = "/v1/history",
    tag = "operations",
    summary = "Attempts per minute, their latency and the backlog over the last hours",
    description = "Kept in this process's memory, one-minute buckets over the last 6 hours per target: \
                   lost on restart, and on a shared store each host reports its own attempts \
                   (the backlog is the store's).",
    params(HistoryIn),
    responses(
        (status = 200, description = "One point per minute", body = HistoryOut),
        (status = 400, description = "`minutes` is not a whole number from 1 to 360", body = openapi::ErrorBody),
        openapi::NeedsRead,
    ),
    security(("bearer" = ["read"]), ()),
)]
pub(super) async fn get_history(
    State(_state): State<Arc<AppState>>,
    query: Result<axum::extract::Query<HistoryIn>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<HistoryOut>, ApiError> {
    let axum::extract::Query(q) = query.map_err(|e| ApiError::BadRequest(e.body_text()))?;
    let minutes = match q.minutes {
        None => DEFAULT_MINUTES,
        Some(m) if (1..=HISTORY_MINUTES).contains(&m) => m,
        Some(m) => {
            return Err(ApiError::BadRequest(format!(
                "`minutes` must be between 1 and {HISTORY_MINUTES}, not {m}"
            )));
        }
    };
    let series = history::recent(minutes);
    Ok(Json(HistoryOut {
        bucket_ms: BUCKET_MS as u64,
        all: series.all.into_iter().map(Into::into).collect(),
        targets: series
            .targets
            .into_iter()
            .map(|(target, points)| TargetSeriesOut {
                target,
                points: points.into_iter().map(Into::into).collect(),
            })
            .collect(),
    }))
}
