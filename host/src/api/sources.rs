//! `GET /v1/sources`: the relay status of every `[[sources]]` entry (what it reads, rows
//! relayed and refused, lag, last poll, last error).

use std::sync::Arc;

use axum::Json;
use axum::extract::State;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::{AppState, openapi};
use crate::domain::format_ms;
use crate::source::{SourceStatus, Stamped};

/// A message with its time, as the API shows it.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct StampedOut {
    pub message: String,
    pub at: String,
}

impl From<Stamped> for StampedOut {
    fn from(s: Stamped) -> Self {
        Self {
            message: s.message,
            at: format_ms(s.at),
        }
    }
}

/// One source in `GET /v1/sources` (also what `outboxd source status` reads).
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct SourceOut {
    pub name: String,
    pub kind: String,
    pub table: String,
    pub schema: String,
    pub on_relayed: String,
    pub state: String,
    pub rows_relayed: u64,
    pub rows_duplicate: u64,
    pub rows_failed: u64,
    pub lag_ms: Option<i64>,
    pub last_poll_at: Option<String>,
    pub last_error: Option<StampedOut>,
    pub last_bad_row: Option<StampedOut>,
}

impl From<SourceStatus> for SourceOut {
    fn from(s: SourceStatus) -> Self {
        Self {
            name: s.name,
            kind: s.kind.as_str().to_owned(),
            table: s.table,
            schema: s.schema.as_str().to_owned(),
            on_relayed: s.on_relayed.as_str().to_owned(),
            state: s.state.as_str().to_owned(),
            rows_relayed: s.rows_relayed,
            rows_duplicate: s.rows_duplicate,
            rows_failed: s.rows_failed,
            lag_ms: s.lag_ms,
            last_poll_at: s.last_poll_at.map(format_ms),
            last_error: s.last_error.map(Into::into),
            last_bad_row: s.last_bad_row.map(Into::into),
        }
    }
}

#[utoipa::path(
    get,
    path = "/v1/sources",
    tag = "sources",
    summary = "Relay status of every application outbox table (`[[sources]]`)",
    responses(
        (status = 200, description = "Sources in configuration order", body = Vec<SourceOut>),
        openapi::NeedsRead,
    ),
    security(("bearer" = ["read"]), ()),
)]
pub(super) async fn get_sources(State(state): State<Arc<AppState>>) -> Json<Vec<SourceOut>> {
    Json(state.sources.snapshot().into_iter().map(Into::into).collect())
}
