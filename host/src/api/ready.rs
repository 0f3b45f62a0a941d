//! Readiness (`GET /readyz`), apart from liveness (`GET /healthz`): whether this host should
//! be sent traffic now. Three checks, each with its reason: the store accepts a write (a
//! committed write probe, and room on the database's filesystem: [`Store::probe_write`]),
//! the targets are loaded, and every relayed source was reachable at its last poll. `200`
//! when all pass, `503` when one fails; either way the body names every check.

use std::sync::Arc;
use std::time::Duration;

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use serde::Serialize;
use utoipa::ToSchema;

use super::AppState;
use crate::domain::now_ms;
use crate::source::SourceState;
use crate::store::Store;

/// How long the write probe may take before the store counts as not accepting writes (a
/// writer queued behind a long transaction, a database server that does not answer).
const PROBE_TIMEOUT: Duration = Duration::from_secs(5);

/// The answer of `GET /readyz`.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct ReadyOut {
    /// `ready`, or `not ready` when a check failed.
    pub status: String,
    /// Every check, in this order: `store`, `targets`, `sources`.
    pub checks: Vec<Check>,
}

/// One check of `/readyz`.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct Check {
    /// `store`, `targets` or `sources`.
    pub name: String,
    pub ok: bool,
    /// What was found: why it failed, or what passed.
    pub reason: String,
}

impl Check {
    fn new(name: &str, ok: bool, reason: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            ok,
            reason: reason.into(),
        }
    }
}

#[utoipa::path(
    get,
    path = "/readyz",
    tag = "operations",
    summary = "Readiness: the store accepts writes, targets are loaded, sources are reachable",
    responses(
        (status = 200, description = "Ready: every check passed", body = ReadyOut),
        (status = 503, description = "Not ready: the failed checks say why", body = ReadyOut),
        (status = 401, description = "A token is required (unless `/readyz` is in `[api] open`)", body = super::openapi::ErrorBody),
        (status = 403, description = "The token lacks the `read` scope", body = super::openapi::ErrorBody),
    ),
    security(("bearer" = ["read"]), ()),
)]
pub(super) async fn readyz(State(state): State<Arc<AppState>>) -> (StatusCode, Json<ReadyOut>) {
    let checks = vec![
        store_check(state.store.as_ref()).await,
        targets_check(&state),
        sources_check(&state),
    ];
    let ready = checks.iter().all(|c| c.ok);
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    let out = ReadyOut {
        status: if ready { "ready" } else { "not ready" }.into(),
        checks,
    };
    (status, Json(out))
}

async fn store_check(store: &dyn Store) -> Check {
    match tokio::time::timeout(PROBE_TIMEOUT, store.probe_write(now_ms())).await {
        Ok(Ok(())) => Check::new("store", true, "accepts writes"),
        Ok(Err(e)) => Check::new("store", false, e.to_string()),
        Err(_) => Check::new(
            "store",
            false,
            format!("a write did not finish within {} s", PROBE_TIMEOUT.as_secs()),
        ),
    }
}

/// The registry's first scan ends before the API listens, so a host that answers has loaded
/// its targets; files that did not load make it `degraded` (`/healthz`), not unready: every
/// other target still gets its deliveries.
fn targets_check(state: &AppState) -> Check {
    let snapshot = state.registry.snapshot();
    let mut reason = format!("{} loaded", snapshot.targets.len());
    if !snapshot.held.is_empty() {
        reason.push_str(&format!(", {} held (see /healthz)", snapshot.held.len()));
    }
    Check::new("targets", true, reason)
}

/// A source whose last poll failed is unreachable; one not polled yet is not counted against.
fn sources_check(state: &AppState) -> Check {
    let sources = state.sources.snapshot();
    let failing: Vec<String> = sources
        .iter()
        .filter(|s| s.state == SourceState::Failing)
        .map(|s| match &s.last_error {
            Some(e) => format!("{}: {}", s.name, e.message),
            None => s.name.clone(),
        })
        .collect();
    if failing.is_empty() {
        Check::new("sources", true, format!("{} reachable or starting", sources.len()))
    } else {
        Check::new("sources", false, format!("unreachable: {}", failing.join("; ")))
    }
}
