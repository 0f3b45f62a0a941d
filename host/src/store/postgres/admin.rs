//! The operator's and the host's bulk changes: manual pause, replay of failed deliveries,
//! cancellation of an event's deliveries, erasure of an event's payload, holding and resuming
//! targets that no live host has loaded, and retention (prune, payload erasure).

use sqlx::postgres::{PgConnection, PgPool};

use super::{counted, filters, hosts, wakeups};
use crate::domain::{EventId, Millis, TargetName};
use crate::store::rows;
use crate::store::{Cancellation, ERASED_HEADERS, ERASED_PAYLOAD, Erasure, EventRef, FailedFilter, StoreError};

pub(super) async fn set_target_paused(
    conn: &mut PgConnection,
    target: &TargetName,
    paused: bool,
    now: Millis,
) -> Result<bool, StoreError> {
    let mut changed = counted::query(sql!("update_target_paused"))
        .bind(target.as_str())
        .bind(paused)
        .bind(now)
        .execute(&mut *conn)
        .await?
        .rows_affected()
        > 0;
    if !changed && paused {
        changed = counted::query(sql!("insert_target_paused"))
            .bind(target.as_str())
            .bind(now)
            .execute(&mut *conn)
            .await?
            .rows_affected()
            > 0;
    }
    if changed && !paused {
        wakeups::notify_resumed(conn).await?;
    }
    Ok(changed)
}

pub(super) async fn replay(
    conn: &mut PgConnection,
    filter: &FailedFilter,
    limit: usize,
    now: Millis,
) -> Result<usize, StoreError> {
    let n = filters::replay(filter, limit as i64, now)
        .build()
        .execute(&mut *conn)
        .await?
        .rows_affected() as usize;
    if n > 0 {
        wakeups::notify(conn).await?;
    }
    Ok(n)
}

/// Records the targets this host has loaded, then pauses the pending deliveries of targets no
/// live host has and resumes the paused ones of targets some live host has.
/// The id of the event `event` names (by key: the ledger's), not yet known to be stored.
async fn resolve(conn: &mut PgConnection, event: &EventRef) -> Result<Option<String>, StoreError> {
    Ok(match event {
        EventRef::Id(id) => Some(id.to_string()),
        EventRef::ProducerKey(key) => {
            let found: Option<(String, String)> = counted::query_as(sql!("find_idempotency_keys"))
                .bind(vec![key.as_str()])
                .fetch_optional(&mut *conn)
                .await?;
            found.map(|(_, id)| id)
        }
    })
}

/// Each delivery of event `id`: `(target, status)`, by target, locked until the end of the
/// transaction.
async fn lock_delivery_statuses(conn: &mut PgConnection, id: &str) -> Result<Vec<(String, String)>, StoreError> {
    Ok(counted::query_as(sql!("lock_deliveries_of_event"))
        .bind(id)
        .fetch_all(&mut *conn)
        .await?)
}

/// Cancels the deliveries of the event `event` names that a cancellation takes; `None` when
/// there is no such event. The deliveries are locked first, so what they were is what changed.
pub(super) async fn cancel(
    conn: &mut PgConnection,
    event: &EventRef,
    now: Millis,
) -> Result<Option<Cancellation>, StoreError> {
    let Some(id) = resolve(conn, event).await? else {
        return Ok(None);
    };
    let exists: Option<i32> = counted::query_scalar(sql!("event_exists"))
        .bind(&id)
        .fetch_optional(&mut *conn)
        .await?;
    if exists.is_none() {
        return Ok(None);
    }
    let before = lock_delivery_statuses(conn, &id).await?;
    counted::query(sql!("cancel_deliveries"))
        .bind(&id)
        .bind(now)
        .execute(&mut *conn)
        .await?;
    rows::cancellation(&id, before).map(Some)
}

/// Erases the payload of the event `event` names once its deliveries are all final; `None`
/// when there is no such event. The event and its deliveries are locked first (a replay or a
/// claim skips them meanwhile).
pub(super) async fn erase_payload(
    conn: &mut PgConnection,
    event: &EventRef,
    now: Millis,
) -> Result<Option<(EventId, Erasure)>, StoreError> {
    let Some(id) = resolve(conn, event).await? else {
        return Ok(None);
    };
    let erased_at: Option<Option<Millis>> = counted::query_scalar(sql!("lock_event_erased_at"))
        .bind(&id)
        .fetch_optional(&mut *conn)
        .await?;
    let Some(erased_at) = erased_at else { return Ok(None) };
    if let Some(at) = erased_at {
        return Ok(Some((rows::decode(&id)?, Erasure::AlreadyErased { at })));
    }
    let waiting = rows::not_final(lock_delivery_statuses(conn, &id).await?)?;
    if !waiting.is_empty() {
        return Ok(Some((rows::decode(&id)?, Erasure::NotFinal(waiting))));
    }
    counted::query(sql!("erase_event_payload"))
        .bind(&id)
        .bind(now)
        .bind(ERASED_PAYLOAD)
        .bind(ERASED_HEADERS)
        .execute(&mut *conn)
        .await?;
    Ok(Some((rows::decode(&id)?, Erasure::Erased { at: now })))
}

pub(super) async fn erase_finished_payloads(
    pool: &PgPool,
    before: Millis,
    limit: usize,
    now: Millis,
) -> Result<usize, StoreError> {
    let n = counted::query(sql!("erase_finished_payloads"))
        .bind(before)
        .bind(now)
        .bind(ERASED_PAYLOAD)
        .bind(ERASED_HEADERS)
        .bind(limit as i64)
        .execute(pool)
        .await?
        .rows_affected();
    Ok(n as usize)
}

pub(super) async fn sync_paused(
    conn: &mut PgConnection,
    host: &str,
    live: &[String],
    now: Millis,
) -> Result<(usize, usize), StoreError> {
    hosts::register(conn, host, live, now).await?;
    let paused = counted::query(sql!("pause_unloaded"))
        .bind(now)
        .execute(&mut *conn)
        .await?
        .rows_affected() as usize;
    let resumed = counted::query(sql!("resume_loaded"))
        .bind(now)
        .execute(&mut *conn)
        .await?
        .rows_affected() as usize;
    if resumed > 0 {
        wakeups::notify(conn).await?;
    }
    Ok((paused, resumed))
}

pub(super) async fn hold_target(
    pool: &PgPool,
    target: &TargetName,
    reason: &str,
    now: Millis,
) -> Result<usize, StoreError> {
    let n = counted::query(sql!("hold_target"))
        .bind(target.as_str())
        .bind(reason)
        .bind(now)
        .execute(pool)
        .await?
        .rows_affected();
    Ok(n as usize)
}

pub(super) async fn prune_finished(conn: &mut PgConnection, before: Millis, limit: usize) -> Result<usize, StoreError> {
    let ids: Vec<String> = counted::query_scalar(sql!("choose_finished_events"))
        .bind(before)
        .bind(limit as i64)
        .fetch_all(&mut *conn)
        .await?;
    delete_events(conn, &ids).await?;
    Ok(ids.len())
}

pub(super) async fn prune_idempotency_keys(pool: &PgPool, before: Millis, limit: usize) -> Result<usize, StoreError> {
    let n = counted::query(sql!("prune_idempotency_keys"))
        .bind(before)
        .bind(limit as i64)
        .execute(pool)
        .await?
        .rows_affected();
    Ok(n as usize)
}

/// Deletes up to `limit` failed deliveries matching `filter` with their history, then the
/// events left with no delivery.
pub(super) async fn prune_failed(
    conn: &mut PgConnection,
    filter: &FailedFilter,
    limit: usize,
) -> Result<usize, StoreError> {
    let chosen: Vec<(i64, String)> = filters::choose_failed(filter, limit as i64)
        .build_query_as()
        .fetch_all(&mut *conn)
        .await?;
    let (ids, events): (Vec<i64>, Vec<String>) = chosen.into_iter().unzip();
    counted::query(sql!("delete_delivery_attempts"))
        .bind(&ids)
        .execute(&mut *conn)
        .await?;
    counted::query(sql!("delete_deliveries"))
        .bind(&ids)
        .execute(&mut *conn)
        .await?;
    let emptied: Vec<String> = counted::query_scalar(sql!("choose_emptied_events"))
        .bind(&events)
        .fetch_all(&mut *conn)
        .await?;
    delete_events(conn, &emptied).await?;
    Ok(ids.len())
}

/// Deletes events with their deliveries and attempt history.
async fn delete_events(conn: &mut PgConnection, ids: &[String]) -> Result<(), StoreError> {
    if ids.is_empty() {
        return Ok(());
    }
    for sql in [
        sql!("delete_event_attempts"),
        sql!("delete_event_deliveries"),
        sql!("delete_events"),
    ] {
        counted::query(sql).bind(ids).execute(&mut *conn).await?;
    }
    Ok(())
}
