//! What the API, the CLI and the dispatcher read: an event with its deliveries and history,
//! the dead-letter listing and count, status counts, due times, attempts per version and the
//! paused targets.

use std::collections::BTreeMap;

use rusqlite::{Connection, OptionalExtension, Transaction, params};

use super::filters;
use crate::domain::{EventId, Millis, TargetName};
use crate::store::rows::{self, DeliveryRow};
use crate::store::{
    EventDetail, EventFilter, EventSummary, FailedDelivery, FailedFilter, StatusCounts, StoreError, StoredEvent,
    VersionAttempts,
};

pub(super) fn load_event(conn: &Connection, id: &str) -> Result<Option<StoredEvent>, StoreError> {
    conn.prepare_cached(sql!("select_event"))?
        .query_row([id], |r| r.try_into())
        .optional()?
        .map(rows::stored_event)
        .transpose()
}

pub(super) fn event(tx: &Transaction<'_>, id: EventId) -> Result<Option<EventDetail>, StoreError> {
    let id = id.to_string();
    let Some(event) = load_event(tx, &id)? else {
        return Ok(None);
    };
    let deliveries: Vec<rows::DeliveryColumns> = tx
        .prepare_cached(sql!("select_deliveries_of_event"))?
        .query_map([&id], |r| r.try_into())?
        .collect::<Result<_, _>>()?;
    let mut history = tx.prepare_cached(sql!("select_attempts_of_delivery"))?;
    let deliveries = deliveries
        .into_iter()
        .map(|d| {
            let d = DeliveryRow::from(d);
            let attempts = history.query_map([d.id], |r| r.try_into())?.collect::<Result<_, _>>()?;
            rows::delivery_detail(d, attempts)
        })
        .collect::<Result<_, StoreError>>()?;
    let erased_at = tx
        .prepare_cached(sql!("event_erased_at"))?
        .query_row([&id], |r| r.get(0))?;
    Ok(Some(EventDetail {
        event,
        deliveries,
        erased_at,
    }))
}

pub(super) fn search_events(
    tx: &Transaction<'_>,
    filter: &EventFilter,
    limit: usize,
) -> Result<Vec<EventSummary>, StoreError> {
    let (clause, params) = filters::event_where(filter);
    let limit = limit as i64;
    let bind = filters::bind(&params, &[(":limit", &limit)]);
    let mut stmt = tx.prepare(&filters::search_events(&clause))?;
    let found: Vec<rows::SummaryColumns> = stmt
        .query_map(bind.as_slice(), |r| r.try_into())?
        .collect::<Result<_, _>>()?;
    let mut statuses = tx.prepare_cached(sql!("delivery_statuses_of_event"))?;
    found
        .into_iter()
        .map(|columns| {
            let deliveries: Vec<(String, String)> = statuses
                .query_map([&columns.0], |r| Ok((r.get(0)?, r.get(1)?)))?
                .collect::<Result<_, _>>()?;
            rows::event_summary(columns, deliveries)
        })
        .collect()
}

pub(super) fn list_failed(
    tx: &Transaction<'_>,
    filter: &FailedFilter,
    after: i64,
    limit: usize,
) -> Result<Vec<FailedDelivery>, StoreError> {
    let (clause, params) = filters::failed_where(filter);
    let limit = limit as i64;
    let bind = filters::bind(&params, &[(":after", &after), (":limit", &limit)]);
    let mut stmt = tx.prepare(&filters::list_failed(&clause))?;
    let found: Vec<rows::FailedColumns> = stmt
        .query_map(bind.as_slice(), |r| r.try_into())?
        .collect::<Result<_, _>>()?;
    found.into_iter().map(rows::failed_delivery).collect()
}

pub(super) fn count_failed(tx: &Transaction<'_>, filter: &FailedFilter) -> Result<u64, StoreError> {
    let (clause, params) = filters::failed_where(filter);
    let bind = filters::bind(&params, &[]);
    Ok(tx
        .prepare(&filters::count_failed(&clause))?
        .query_row(bind.as_slice(), |r| r.get(0))?)
}

/// (target, key, count) rows of a cached statement without parameters.
fn triples(tx: &Transaction<'_>, sql: &str) -> Result<Vec<(String, String, i64)>, StoreError> {
    Ok(tx
        .prepare_cached(sql)?
        .query_map([], |r| r.try_into())?
        .collect::<Result<_, _>>()?)
}

pub(super) fn status_counts(tx: &Transaction<'_>) -> Result<StatusCounts, StoreError> {
    rows::status_counts(triples(tx, sql!("status_counts"))?)
}

pub(super) fn version_attempts(tx: &Transaction<'_>) -> Result<VersionAttempts, StoreError> {
    Ok(rows::version_attempts(triples(tx, sql!("version_attempts"))?))
}

pub(super) fn next_due(tx: &Transaction<'_>, target: &TargetName) -> Result<Option<Millis>, StoreError> {
    Ok(tx
        .prepare_cached(sql!("next_due"))?
        .query_row([target.as_str()], |r| r.get(0))?)
}

pub(super) fn oldest_due(tx: &Transaction<'_>, now: Millis) -> Result<BTreeMap<String, Millis>, StoreError> {
    Ok(tx
        .prepare_cached(sql!("oldest_due"))?
        .query_map(params![now], |r| r.try_into())?
        .collect::<Result<_, _>>()?)
}

pub(super) fn paused_targets(tx: &Transaction<'_>) -> Result<Vec<String>, StoreError> {
    Ok(tx
        .prepare_cached(sql!("paused_targets"))?
        .query_map([], |r| r.get(0))?
        .collect::<Result<_, _>>()?)
}
