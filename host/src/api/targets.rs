//! `GET /v1/targets` (every target: what is loaded, its settings, counts, breaker,
//! concurrency limit, retry budget, lag and recent success) and the manual pause
//! (`POST /v1/targets/{name}/pause|resume`).

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::Json;
use axum::extract::State;
use serde::Serialize;
use utoipa::ToSchema;

use super::extract::PathParam;
use super::{ApiError, AppState, openapi};
use crate::dispatch::flow::FlowStatus;
use crate::domain::{DeliveryStatus, InvalidValue, TargetName, format_ms, now_ms};

/// A file of the target that failed at the last reload.
#[derive(Serialize, ToSchema)]
pub(crate) struct ReloadErrorOut {
    pub file: String,
    /// 1-based line of the error in the file, when known.
    pub line: Option<u32>,
    /// 1-based column, when known.
    pub column: Option<u32>,
    /// What is wrong, without the file's text (the log has the whole message).
    pub message: String,
    pub at: String,
}

/// A target's circuit breaker.
#[derive(Serialize, ToSchema)]
pub(super) struct BreakerOut {
    /// `closed`, `open` or `half_open`.
    #[schema(value_type = String)]
    state: &'static str,
    consecutive_failures: u32,
    /// Failures and attempts among the remembered ones (the sliding window).
    window_failures: u32,
    window_attempts: u32,
    /// Milliseconds the target stays paused because its receiver asked (`Retry-After`).
    paused_ms: Option<u64>,
}

/// A target's concurrency: the limit in force and what it is learned from.
#[derive(Serialize, ToSchema)]
pub(super) struct ConcurrencyOut {
    /// `adaptive` (learned from the receiver, between 1 and the ceiling) or `fixed`.
    #[schema(value_type = String)]
    mode: &'static str,
    /// Attempts that may run at once now.
    limit: u32,
    /// The manifest's `concurrency`.
    ceiling: u32,
    /// The receiver's unloaded round trip as learned, in milliseconds (adaptive only).
    baseline_ms: Option<f64>,
    /// Attempts the receiver refused since start-up (429, 503, refused connections, timeouts).
    refusals: u64,
    /// While the receiver limits its rate (a burst of 429s): the pace in force, attempts a
    /// second, learned from what it takes (adaptive only); `null` otherwise.
    pace_per_sec: Option<f64>,
}

/// A target's retry budget: retries may add a share of the first attempts over a window.
#[derive(Serialize, ToSchema)]
pub(super) struct RetryBudgetOut {
    /// Whether it holds retries back now: only while the receiver is under pressure (the
    /// limit below its ceiling, a pace in force, or the breaker not closed).
    engaged: bool,
    /// First attempts and retries started in the window.
    first_attempts: u64,
    retries: u64,
    /// Retries the window allows.
    allowed: u64,
    /// Retries held back since start-up (each waited and went again later, uncounted).
    held: u64,
}

impl ConcurrencyOut {
    fn of(f: &FlowStatus) -> Self {
        Self {
            mode: f.mode.as_str(),
            limit: f.limit,
            ceiling: f.ceiling,
            baseline_ms: f.baseline.map(|d| d.as_secs_f64() * 1000.0),
            refusals: f.refusals,
            pace_per_sec: f.pace,
        }
    }
}

impl RetryBudgetOut {
    fn of(f: &FlowStatus) -> Option<Self> {
        f.budget.map(|(engaged, b)| Self {
            engaged,
            first_attempts: b.first_attempts,
            retries: b.retries,
            allowed: b.allowed,
            held: b.held,
        })
    }
}

/// A target's OAuth2 client credentials (`[oauth2]`) and its token cache: never the secret
/// nor a token.
#[derive(Serialize, ToSchema)]
pub(super) struct OAuth2Out {
    /// The token endpoint's scheme, host and port.
    token_url: String,
    scope: Option<String>,
    /// `basic` or `body`: how the client authenticates at the token endpoint.
    #[schema(value_type = String)]
    auth_style: &'static str,
    /// The `host:port` pairs whose requests carry the token.
    hosts: Vec<String>,
    /// Milliseconds the cached token is still used for; `null` without one (the next request
    /// fetches one).
    token_valid_ms: Option<u64>,
    /// Tokens fetched since this version of the target loaded.
    fetches: u64,
    /// Fetches that failed since then.
    failures: u64,
    /// Why the last fetch failed (the endpoint's origin, status and error code); `null` once
    /// one succeeds.
    last_error: Option<String>,
}

/// A target: what is loaded, its settings, counts and health.
#[derive(Serialize, Default, ToSchema)]
pub(super) struct TargetOut {
    name: String,
    /// Whether a plugin is loaded for it; `false` for a target that only has deliveries
    /// (its files were removed) or whose files have never loaded.
    loaded: bool,
    plugin: Option<String>,
    /// Content hash (SHA-256) of the plugin version serving now.
    hash: Option<String>,
    loaded_at: Option<String>,
    /// Whether the serving version was compiled or came from the compile cache.
    #[schema(value_type = Option<String>)]
    compiled_from: Option<&'static str>,
    events: Vec<String>,
    /// Its payload filter (a CEL expression), if it has one.
    filter: Option<String>,
    /// The names of the headers the host sets on its plugin's requests, sorted (the values
    /// are not shown: they may be credentials).
    held_headers: Vec<String>,
    /// The kinds of credentials the host holds for it, sorted: `headers`, `oauth2`, `mtls`
    /// (a client certificate), `ca` (a private CA); never their values.
    credentials: Vec<String>,
    /// Its OAuth2 client and token cache, when it has `[oauth2]`.
    oauth2: Option<OAuth2Out>,
    timeout_ms: Option<u64>,
    concurrency: Option<u32>,
    allowed_hosts: Vec<String>,
    #[schema(value_type = Option<String>)]
    class: Option<&'static str>,
    ordered: Option<bool>,
    rate_per_sec: Option<f64>,
    /// Paused by hand (`POST /v1/targets/{name}/pause`): its lane claims nothing.
    paused: bool,
    /// The circuit breaker: `closed`, `open` or `half_open`, with the consecutive failures.
    breaker: Option<BreakerOut>,
    /// The limit in force on its attempts (once it has run in this process).
    concurrency_limit: Option<ConcurrencyOut>,
    /// Its retry budget (once it has run in this process; `null` when disabled).
    retry_budget: Option<RetryBudgetOut>,
    /// Deliveries per status.
    #[schema(value_type = BTreeMap<String, u64>)]
    counts: BTreeMap<&'static str, u64>,
    /// Attempts run by each plugin version (content hash), over the store's lifetime.
    versions: BTreeMap<String, u64>,
    /// Why the target's files could not be loaded at the last reload; the previous version,
    /// if any, keeps serving meanwhile. `null` once a good file is in place.
    last_reload_error: Option<ReloadErrorOut>,
    /// Its manifest is valid but its plugin has never loaded: it is routed, and its
    /// deliveries are held `paused` until a good plugin file appears.
    held: bool,
    /// Age of the oldest due pending delivery in milliseconds; 0 when nothing is due.
    lag_ms: u64,
    /// Attempts of the last five minutes in this process.
    recent: RecentOut,
}

/// Attempt outcomes of a target over the last five minutes (since start-up if shorter).
#[derive(Serialize, Default, ToSchema)]
pub(super) struct RecentOut {
    delivered: u64,
    /// Retryable and permanent failures.
    failed: u64,
    /// `delivered / (delivered + failed)`; null without attempts.
    success_rate: Option<f64>,
}

#[utoipa::path(
    get,
    path = "/v1/targets",
    tag = "targets",
    summary = "Every target: loaded version, settings, counts, breaker, lag, recent success",
    responses(
        (status = 200, description = "Targets by name", body = Vec<TargetOut>),
        openapi::NeedsRead,
        openapi::StoreFailure,
    ),
    security(("bearer" = ["read"]), ()),
)]
pub(super) async fn get_targets(State(state): State<Arc<AppState>>) -> Result<Json<Vec<TargetOut>>, ApiError> {
    let snapshot = state.registry.snapshot();
    let now = now_ms();
    let oldest_due = state.store.oldest_due(now).await?;
    let mut recent = crate::telemetry::metrics::recent_outcomes();
    let mut counts = state.store.status_counts().await?;
    let mut versions = state.store.version_attempts().await?;
    let paused = state.store.paused_targets().await?;
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
            t.lag_ms = oldest_due.get(&name).map_or(0, |due| (now - due).max(0) as u64);
            let r = recent.remove(&name).unwrap_or_default();
            t.recent = RecentOut {
                delivered: r.delivered,
                failed: r.failed,
                success_rate: r.success_rate(),
            };
            t.paused = paused.contains(&name);
            t.breaker = state.breakers.status(&name).map(|b| BreakerOut {
                state: b.state,
                consecutive_failures: b.consecutive_failures,
                window_failures: b.window_failures,
                window_attempts: b.window_attempts,
                paused_ms: b.paused_for.map(|d| d.as_millis() as u64),
            });
            if let Some(flow) = state.flows.status(&name) {
                t.concurrency_limit = Some(ConcurrencyOut::of(&flow));
                t.retry_budget = RetryBudgetOut::of(&flow);
            }
            t.last_reload_error = snapshot
                .errors
                .iter()
                .rfind(|e| e.target.as_ref().is_some_and(|n| n.as_str() == name))
                .map(|e| ReloadErrorOut {
                    file: e.file.display().to_string(),
                    line: e.line,
                    column: e.column,
                    message: e.summary.clone(),
                    at: format_ms(e.at),
                });
            if let Some(h) = name.parse().ok().and_then(|n| snapshot.held.get(&n)) {
                t.held = true;
                t.plugin = h.spec.plugin_path.file_name().map(|f| f.to_string_lossy().into_owned());
                t.events = h.spec.events.iter().map(|p| p.to_string()).collect();
                t.filter = h.spec.filter.as_ref().map(|f| f.text().to_owned());
                t.class = Some(h.spec.class.as_str());
            }
            if let Some(live) = name.parse().ok().and_then(|n| snapshot.targets.get(&n)) {
                let spec = &live.spec;
                t.loaded = true;
                t.plugin = spec.plugin_path.file_name().map(|f| f.to_string_lossy().into_owned());
                t.hash = Some(live.binding.plugin().hash().to_owned());
                t.loaded_at = Some(format_ms(live.loaded_at));
                t.compiled_from = Some(if live.binding.plugin().from_cache() {
                    "cache"
                } else {
                    "compile"
                });
                t.events = spec.events.iter().map(|p| p.to_string()).collect();
                t.filter = spec.filter.as_ref().map(|f| f.text().to_owned());
                t.held_headers = spec.headers.iter().map(|(name, _)| name.clone()).collect();
                t.held_headers.sort();
                let tls = spec.tls.as_deref();
                t.credentials = [
                    (!spec.headers.is_empty()).then_some("headers"),
                    spec.oauth2.is_some().then_some("oauth2"),
                    tls.filter(|t| t.mutual()).map(|_| "mtls"),
                    tls.filter(|t| !t.ca.is_empty()).map(|_| "ca"),
                ]
                .into_iter()
                .flatten()
                .map(str::to_owned)
                .collect();
                t.credentials.sort();
                if let (Some(config), Some(status)) = (&spec.oauth2, live.binding.oauth2_status()) {
                    t.oauth2 = Some(OAuth2Out {
                        token_url: crate::redact::origin(config.token_url.as_str()),
                        scope: config.scope.clone(),
                        auth_style: config.auth_style.as_str(),
                        hosts: config.hosts.clone(),
                        token_valid_ms: status.valid_for.map(|d| d.as_millis() as u64),
                        fetches: status.fetches,
                        failures: status.failures,
                        last_error: status.last_error,
                    });
                }
                t.timeout_ms = Some(spec.timeout.as_millis() as u64);
                t.concurrency = Some(spec.concurrency);
                t.allowed_hosts = spec.allowed_hosts.clone();
                t.class = Some(spec.class.as_str());
                t.ordered = Some(spec.ordered);
                t.rate_per_sec = spec.rate_per_sec;
            }
            t.name = name;
            t
        })
        .collect();
    Ok(Json(out))
}

async fn set_paused(state: &AppState, name: &str, paused: bool) -> Result<Json<serde_json::Value>, ApiError> {
    let target: TargetName = name.parse().map_err(|e: InvalidValue| ApiError::BadRequest(e.0))?;
    let changed = state.store.set_target_paused(&target, paused, now_ms()).await?;
    // A paused lane gives back what it read ahead, at once.
    state.outbox.pause_changed();
    if !paused {
        state.outbox.wake();
    }
    Ok(Json(
        serde_json::json!({ "target": target, "paused": paused, "changed": changed }),
    ))
}

#[utoipa::path(
    post,
    path = "/v1/targets/{name}/pause",
    tag = "targets",
    summary = "Pause a target by hand (stored; survives restarts)",
    params(("name" = String, Path, description = "Target name", pattern = "^[a-z0-9][a-z0-9_-]{0,63}$")),
    responses(
        (status = 200, description = "Paused", body = openapi::PausedOut),
        (status = 400, description = "Not a valid target name", body = openapi::ErrorBody),
        openapi::NeedsAdmin,
        openapi::StoreFailure,
    ),
    security(("bearer" = ["admin"]), ()),
)]
pub(super) async fn pause_target(
    State(state): State<Arc<AppState>>,
    PathParam(name): PathParam,
) -> Result<Json<serde_json::Value>, ApiError> {
    set_paused(&state, &name, true).await
}

#[utoipa::path(
    post,
    path = "/v1/targets/{name}/resume",
    tag = "targets",
    summary = "Resume a target paused by hand",
    params(("name" = String, Path, description = "Target name", pattern = "^[a-z0-9][a-z0-9_-]{0,63}$")),
    responses(
        (status = 200, description = "Resumed", body = openapi::PausedOut),
        (status = 400, description = "Not a valid target name", body = openapi::ErrorBody),
        openapi::NeedsAdmin,
        openapi::StoreFailure,
    ),
    security(("bearer" = ["admin"]), ()),
)]
pub(super) async fn resume_target(
    State(state): State<Arc<AppState>>,
    PathParam(name): PathParam,
) -> Result<Json<serde_json::Value>, ApiError> {
    set_paused(&state, &name, false).await
}
