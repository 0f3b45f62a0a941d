//! Replays: `POST /v1/deliveries/replay` (a filter starts a bulk replay job, `202`; a list of
//! `delivery_ids` is replayed at once, `200`), the jobs (`GET /v1/replays`, `GET
//! /v1/replays/{id}`) and their cancellation (`POST /v1/replays/{id}/cancel`). `serve`'s
//! replay worker (`crate::replay`) works the jobs; a created job kicks it. The `admin` scope,
//! reading the jobs too.

use std::sync::Arc;

use axum::Json;
use axum::body::Bytes;
use axum::extract::State;
use axum::extract::rejection::BytesRejection;
use axum::http::StatusCode;
use axum::http::header::LOCATION;
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use super::extract::{self, PathParam};
use super::{ApiError, AppState, FilterIn, openapi};
use crate::domain::{format_ms, now_ms};
use crate::store::{FailedFilter, NewReplayJob, ReplayJob};

/// A list of `delivery_ids` is replayed in chunks of this many, one transaction each.
const LISTED_CHUNK: usize = 1000;
/// `GET /v1/replays` shows this many jobs unless `limit` says otherwise, and at most
/// [`MAX_LISTED`].
const DEFAULT_LISTED: usize = 20;
const MAX_LISTED: usize = 100;

/// The filter a job was created with.
#[derive(Serialize, ToSchema)]
pub(crate) struct JobFilterOut {
    /// `dead` or `discarded`; absent: both.
    #[serde(skip_serializing_if = "Option::is_none")]
    status: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    target: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    event_type: Option<String>,
    /// Failed at or after (epoch milliseconds).
    #[serde(skip_serializing_if = "Option::is_none")]
    since: Option<i64>,
    /// Failed before (epoch milliseconds).
    #[serde(skip_serializing_if = "Option::is_none")]
    until: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<String>,
}

/// A bulk replay job and its progress.
#[derive(Serialize, ToSchema)]
pub(crate) struct ReplayJobOut {
    id: i64,
    /// `running` (`serve` works it, and resumes it after a restart), `done`, `cancelled` or
    /// `failed`.
    #[schema(value_type = String, pattern = "^(running|done|cancelled|failed)$")]
    status: &'static str,
    filter: JobFilterOut,
    /// Only deliveries with an id above this.
    after: i64,
    /// At most this many matches; null: every match.
    limit: Option<u64>,
    /// The highest delivery id when the job was created: none above it is taken.
    bound_delivery_id: i64,
    /// Only deliveries that failed before this (the job's start, RFC 3339): one failing later,
    /// or failing again after this job replayed it, is not taken.
    failed_before: String,
    /// Matching deliveries when the job was created (at most `limit`).
    #[schema(minimum = 0)]
    total: u64,
    /// Made pending again so far.
    #[schema(minimum = 0)]
    replayed: u64,
    /// Left alone: their event's payload was erased.
    #[schema(minimum = 0)]
    skipped: u64,
    /// The last delivery id reached.
    cursor: i64,
    /// `(replayed + skipped) / total`, 0 to 1 (1 once `done`). A delivery that stopped
    /// matching before the job reached it (replayed, cancelled or pruned meanwhile) is in
    /// `total` and in neither count.
    #[schema(minimum = 0.0, maximum = 1.0)]
    progress: f64,
    /// Why a `failed` job failed.
    error: Option<String>,
    created_at: String,
    updated_at: String,
    /// When it became `done`, `cancelled` or `failed`.
    finished_at: Option<String>,
}

impl From<ReplayJob> for ReplayJobOut {
    fn from(j: ReplayJob) -> Self {
        let progress = if j.status == crate::domain::ReplayJobStatus::Done {
            1.0
        } else if j.total == 0 {
            0.0
        } else {
            (j.processed() as f64 / j.total as f64).min(1.0)
        };
        Self {
            id: j.id,
            status: j.status.as_str(),
            filter: JobFilterOut {
                status: (j.filter.statuses.len() == 1).then(|| j.filter.statuses[0].as_str().to_owned()),
                target: j.filter.target.as_ref().map(|t| t.to_string()),
                event_type: j.filter.event_type.clone(),
                since: j.filter.since,
                until: j.filter.until,
                error: j.filter.error_contains.clone(),
            },
            after: j.after,
            limit: j.cap,
            bound_delivery_id: j.bound_id,
            failed_before: format_ms(j.failed_before),
            total: j.total,
            replayed: j.replayed,
            skipped: j.skipped,
            cursor: j.cursor,
            progress,
            error: j.error,
            created_at: format_ms(j.created_at),
            updated_at: format_ms(j.updated_at),
            finished_at: j.finished_at.map(format_ms),
        }
    }
}

/// The recent jobs.
#[derive(Serialize, ToSchema)]
pub(crate) struct ReplayJobsOut {
    /// Newest first.
    jobs: Vec<ReplayJobOut>,
}

#[utoipa::path(
    post,
    path = "/v1/deliveries/replay",
    tag = "dead letters",
    summary = "Replay dead/discarded deliveries: a filter starts a bulk replay job",
    description = "The body is a filter (the listing's fields plus `delivery_ids`, `after`, `limit` and `all`). \
                   **A filter** (no `delivery_ids`) starts a bulk replay job and answers `202` with it (and \
                   `Location: /v1/replays/{id}`): `serve` replays its matches in chunks of 1,000 in the \
                   background, each chunk one transaction with the job's progress, so a restart resumes \
                   it and replays nothing twice. It takes only deliveries that failed before the request \
                   and existed then, with an id above `after`, at most `limit` (default: every match; \
                   `\"all\": true` says the same; with `limit`, `limit` counts). Follow it with `GET /v1/replays/{id}`. \
                   **`delivery_ids`** are replayed at once and answered `200` with how \
                   many were; `more` says whether `limit` left some of them.",
    request_body(content = Option<FilterIn>, content_type = "application/json"),
    responses(
        (status = 200, description = "`delivery_ids`: how many were replayed", body = openapi::ReplayedOut),
        (status = 202, description = "A filter: the replay job, started", body = ReplayJobOut,
         headers(("Location" = String, description = "The job: `/v1/replays/{id}`"))),
        (status = 400, description = "Invalid filter", body = openapi::ErrorBody),
        openapi::NeedsAdmin,
        (status = 415, description = "The body is not `application/json`", body = openapi::ErrorBody),
        openapi::StoreFailure,
    ),
    security(("bearer" = ["admin"]), ()),
)]
pub(super) async fn replay(
    State(state): State<Arc<AppState>>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let started = now_ms();
    let body = body.map_err(|e| ApiError::BadRequest(e.body_text()))?;
    // An empty body, `null` and `{}` are all the empty filter; a body of blanks only is not
    // JSON, and refused as any other.
    let request: FilterIn = if body.is_empty() {
        FilterIn::default()
    } else {
        serde_json::from_slice::<Option<FilterIn>>(&body)
            .map_err(|e| ApiError::BadRequest(format!("invalid replay filter: {e}")))?
            .unwrap_or_default()
    };
    let (after, _) = extract::paging(request.after, None, 1, 1)?;
    if request.limit == Some(0) {
        return Err(ApiError::BadRequest(
            "`limit` must be at least 1 (or give `\"all\": true`, or neither)".into(),
        ));
    }
    let limit = request.limit;
    let listed = !request.delivery_ids.is_empty();
    let filter = request.into_filter().map_err(|e| ApiError::BadRequest(e.0))?;
    if listed {
        let cap = limit.unwrap_or(usize::MAX);
        return Ok(Json(replay_listed(&state, filter, after, cap, started).await?).into_response());
    }
    let job = state
        .store
        .create_replay_job(
            NewReplayJob {
                filter,
                after,
                cap: limit.map(|l| l as u64),
            },
            started,
        )
        .await?;
    state.replay_kick.notify_one();
    let location = format!("/v1/replays/{}", job.id);
    Ok((
        StatusCode::ACCEPTED,
        [(LOCATION, location)],
        Json(ReplayJobOut::from(job)),
    )
        .into_response())
}

/// Replays the deliveries `filter.delivery_ids` lists (that failed before `started`), at once.
async fn replay_listed(
    state: &AppState,
    mut filter: FailedFilter,
    start_after: i64,
    cap: usize,
    started: crate::domain::Millis,
) -> Result<serde_json::Value, ApiError> {
    // Only what failed before this request: a delivery that dies again meanwhile is not
    // taken a second time.
    filter.until = Some(filter.until.map_or(started, |until| until.min(started)));
    let (mut replayed, mut after, mut more) = (0, start_after, false);
    loop {
        let want = LISTED_CHUNK.min(cap - replayed);
        if want == 0 {
            more = !state.store.list_failed(filter.clone(), after, 1).await?.is_empty();
            break;
        }
        let page = state.store.list_failed(filter.clone(), after, want).await?;
        let Some(last) = page.last() else { break };
        after = last.delivery_id;
        let ids: Vec<i64> = page.iter().map(|r| r.delivery_id).collect();
        let chunk = FailedFilter {
            delivery_ids: ids,
            ..filter.clone()
        };
        replayed += state.store.replay(chunk, page.len(), now_ms()).await?;
        if page.len() < want {
            break;
        }
    }
    if replayed > 0 {
        state.outbox.wake();
    }
    Ok(serde_json::json!({ "replayed": replayed, "more": more }))
}

/// A job id from the path.
fn job_id(text: &str) -> Result<i64, ApiError> {
    text.parse::<i64>()
        .ok()
        .filter(|id| (1..=crate::whole::MAX_WHOLE).contains(id))
        .ok_or_else(|| ApiError::BadRequest(format!("`{text}` is not a replay job id (a whole number from 1)")))
}

#[utoipa::path(
    get,
    path = "/v1/replays/{id}",
    tag = "dead letters",
    summary = "A bulk replay job and its progress",
    params(("id" = String, Path, description = "The job's id", pattern = "^[1-9][0-9]{0,14}$")),
    responses(
        (status = 200, description = "The job", body = ReplayJobOut),
        (status = 400, description = "Not a job id", body = openapi::ErrorBody),
        openapi::NeedsAdmin,
        (status = 404, description = "No such job", body = openapi::ErrorBody),
        openapi::StoreFailure,
    ),
    security(("bearer" = ["admin"]), ()),
)]
pub(super) async fn get_replay(
    State(state): State<Arc<AppState>>,
    PathParam(id): PathParam,
) -> Result<Json<ReplayJobOut>, ApiError> {
    let id = job_id(&id)?;
    let job = state
        .store
        .replay_job(id)
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("no replay job {id}")))?;
    Ok(Json(job.into()))
}

/// `GET /v1/replays`'s query.
#[derive(Debug, Default, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub(super) struct ListIn {
    /// At most this many jobs (default 20).
    #[serde(default, deserialize_with = "crate::whole::opt_whole")]
    #[param(minimum = 1, maximum = 100)]
    limit: Option<usize>,
}

#[utoipa::path(
    get,
    path = "/v1/replays",
    tag = "dead letters",
    summary = "The recent bulk replay jobs, newest first",
    params(ListIn),
    responses(
        (status = 200, description = "The jobs", body = ReplayJobsOut),
        (status = 400, description = "Invalid `limit`", body = openapi::ErrorBody),
        openapi::NeedsAdmin,
        openapi::StoreFailure,
    ),
    security(("bearer" = ["admin"]), ()),
)]
pub(super) async fn list_replays(
    State(state): State<Arc<AppState>>,
    query: Result<axum::extract::Query<ListIn>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<ReplayJobsOut>, ApiError> {
    let axum::extract::Query(q) = query.map_err(|e| ApiError::BadRequest(e.body_text()))?;
    let (_, limit) = extract::paging(None, q.limit, DEFAULT_LISTED, MAX_LISTED)?;
    let jobs = state.store.replay_jobs(limit).await?;
    Ok(Json(ReplayJobsOut {
        jobs: jobs.into_iter().map(ReplayJobOut::from).collect(),
    }))
}

#[utoipa::path(
    post,
    path = "/v1/replays/{id}/cancel",
    tag = "dead letters",
    summary = "Cancel a running bulk replay job",
    description = "No chunk runs after this (one running now commits first); what the job replayed \
                   stays replayed. A finished job is answered as it is. Idempotent.",
    params(("id" = String, Path, description = "The job's id", pattern = "^[1-9][0-9]{0,14}$")),
    responses(
        (status = 200, description = "The job, `cancelled` (or final already)", body = ReplayJobOut),
        (status = 400, description = "Not a job id", body = openapi::ErrorBody),
        openapi::NeedsAdmin,
        (status = 404, description = "No such job", body = openapi::ErrorBody),
        openapi::StoreFailure,
    ),
    security(("bearer" = ["admin"]), ()),
)]
pub(super) async fn cancel_replay(
    State(state): State<Arc<AppState>>,
    PathParam(id): PathParam,
) -> Result<Json<ReplayJobOut>, ApiError> {
    let id = job_id(&id)?;
    let job = state
        .store
        .cancel_replay_job(id, now_ms())
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("no replay job {id}")))?;
    Ok(Json(job.into()))
}
