//! What the API, the CLI and the dispatcher read: an event with its deliveries and history,
//! the dead-letter listing and count, status counts, due times, attempts per version and the
//! paused targets.

use std::collections::BTreeMap;

use sqlx::postgres::{PgConnection, PgPool};

use super::{counted, filters};
use crate::domain::{EventId, Millis, TargetName};
use crate::store::rows::{
    self, AttemptColumns, DeliveryColumns, DeliveryRow, EventColumns, FailedColumns, SummaryColumns,
};
use crate::store::{
    EventDetail, EventFilter, EventSummary, FailedDelivery, FailedFilter, StatusCounts, StoreError, VersionAttempts,
};

pub(super) async fn event(conn: &mut PgConnection, id: EventId) -> Result<Option<EventDetail>, StoreError> {
    let id = id.to_string();
    let Some(columns) = counted::query_as::<EventColumns>(sql!("select_event"))
        .bind(&id)
        .fetch_optional(&mut *conn)
        .await?
    else {
        return Ok(None);
    };
    let event = rows::stored_event(columns)?;
    let deliveries: Vec<DeliveryColumns> = counted::query_as(sql!("select_deliveries_of_event"))
        .bind(&id)
        .fetch_all(&mut *conn)
        .await?;
    let mut detailed = Vec::with_capacity(deliveries.len());
    for d in deliveries {
        let d = DeliveryRow::from(d);
        let attempts: Vec<AttemptColumns> = counted::query_as(sql!("select_attempts_of_delivery"))
            .bind(d.id)
            .fetch_all(&mut *conn)
            .await?;
        detailed.push(rows::delivery_detail(d, attempts)?);
    }
    let erased_at: Option<Millis> = counted::query_scalar(sql!("event_erased_at"))
        .bind(&id)
        .fetch_one(&mut *conn)
        .await?;
    Ok(Some(EventDetail {
        event,
        deliveries: detailed,
        erased_at,
    }))
}

pub(super) async fn search_events(
    pool: &PgPool,
    filter: &EventFilter,
    limit: usize,
) -> Result<Vec<EventSummary>, StoreError> {
    let found: Vec<SummaryColumns> = filters::search_events(filter, limit as i64)
        .build_query_as()
        .fetch_all(pool)
        .await?;
    if found.is_empty() {
        return Ok(Vec::new());
    }
    let ids: Vec<&str> = found.iter().map(|c| c.0.as_str()).collect();
    let statuses: Vec<(String, String, String)> = counted::query_as(sql!("delivery_statuses_of_events"))
        .bind(&ids)
        .fetch_all(pool)
        .await?;
    let mut by_event: BTreeMap<String, Vec<(String, String)>> = BTreeMap::new();
    for (event, target, status) in statuses {
        by_event.entry(event).or_default().push((target, status));
    }
    found
        .into_iter()
        .map(|columns| {
            let deliveries = by_event.remove(&columns.0).unwrap_or_default();
            rows::event_summary(columns, deliveries)
        })
        .collect()
}

pub(super) async fn list_failed(
    pool: &PgPool,
    filter: &FailedFilter,
    after: i64,
    limit: usize,
) -> Result<Vec<FailedDelivery>, StoreError> {
    let found: Vec<FailedColumns> = filters::list_failed(filter, after, limit as i64)
        .build_query_as()
        .fetch_all(pool)
        .await?;
    found.into_iter().map(rows::failed_delivery).collect()
}

pub(super) async fn count_failed(pool: &PgPool, filter: &FailedFilter) -> Result<u64, StoreError> {
    let (n,): (i64,) = filters::count_failed(filter).build_query_as().fetch_one(pool).await?;
    Ok(n.max(0) as u64)
}

pub(super) async fn status_counts(pool: &PgPool) -> Result<StatusCounts, StoreError> {
    rows::status_counts(counted::query_as(sql!("status_counts")).fetch_all(pool).await?)
}

pub(super) async fn version_attempts(pool: &PgPool) -> Result<VersionAttempts, StoreError> {
    Ok(rows::version_attempts(
        counted::query_as(sql!("version_attempts")).fetch_all(pool).await?,
    ))
}

pub(super) async fn next_due(pool: &PgPool, target: &TargetName) -> Result<Option<Millis>, StoreError> {
    Ok(counted::query_scalar(sql!("next_due"))
        .bind(target.as_str())
        .fetch_one(pool)
        .await?)
}

pub(super) async fn backlog_counts(pool: &PgPool) -> Result<BTreeMap<String, u64>, StoreError> {
    let found: Vec<(String, i64)> = counted::query_as(sql!("backlog_counts")).fetch_all(pool).await?;
    let mut out = BTreeMap::new();
    for (target, n) in found {
        *out.entry(target).or_insert(0) += n.max(0) as u64;
    }
    Ok(out)
}

pub(super) async fn oldest_due(pool: &PgPool, now: Millis) -> Result<BTreeMap<String, Millis>, StoreError> {
    let found: Vec<(String, Millis)> = counted::query_as(sql!("oldest_due")).bind(now).fetch_all(pool).await?;
    Ok(found.into_iter().collect())
}

pub(super) async fn paused_targets(pool: &PgPool) -> Result<Vec<String>, StoreError> {
    Ok(counted::query_scalar(sql!("paused_targets")).fetch_all(pool).await?)
}
