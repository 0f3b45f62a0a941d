//! The operator's and the host's bulk changes: manual pause, replay of failed deliveries,
//! cancellation of an event's deliveries, erasure of an event's payload, holding and resuming
//! targets that are not loaded, and retention (prune, payload erasure).

use rusqlite::{OptionalExtension, Transaction, params};

use super::filters;
use crate::domain::{EventId, Millis, TargetName};
use crate::store::rows;
use crate::store::{Cancellation, ERASED_HEADERS, ERASED_PAYLOAD, Erasure, EventRef, FailedFilter, StoreError};

pub(super) fn set_target_paused(
    tx: &Transaction<'_>,
    target: &TargetName,
    paused: bool,
    now: Millis,
) -> Result<bool, StoreError> {
    let before = tx
        .prepare_cached(sql!("target_paused"))?
        .query_row([target.as_str()], |r| r.get::<_, i64>(0))
        .optional()?
        .is_some_and(|p| p != 0);
    tx.prepare_cached(sql!("set_target_paused"))?
        .execute(params![target.as_str(), paused as i64, now])?;
    Ok(before != paused)
}

pub(super) fn replay(
    tx: &Transaction<'_>,
    filter: &FailedFilter,
    limit: usize,
    now: Millis,
) -> Result<usize, StoreError> {
    let (clause, params) = filters::failed_where(filter);
    let limit = limit as i64;
    let bind = filters::bind(&params, &[(":now", &now), (":limit", &limit)]);
    Ok(tx.prepare(&filters::replay(&clause))?.execute(bind.as_slice())?)
}

/// The id of the event `event` names, if it is stored.
fn resolve(tx: &Transaction<'_>, event: &EventRef) -> Result<Option<String>, StoreError> {
    let id = match event {
        EventRef::Id(id) => id.to_string(),
        EventRef::ProducerKey(key) => {
            let found = tx
                .prepare_cached(sql!("find_idempotency_key"))?
                .query_row([key.as_str()], |r| r.get::<_, String>(0))
                .optional()?;
            let Some(id) = found else { return Ok(None) };
            id
        }
    };
    let exists = tx.prepare_cached(sql!("event_exists"))?.exists([&id])?;
    Ok(exists.then_some(id))
}

/// Each delivery of event `id`: `(target, status)`, by target.
fn delivery_statuses(tx: &Transaction<'_>, id: &str) -> Result<Vec<(String, String)>, StoreError> {
    Ok(tx
        .prepare_cached(sql!("delivery_statuses_of_event"))?
        .query_map([id], |r| Ok((r.get(0)?, r.get(1)?)))?
        .collect::<Result<_, _>>()?)
}

/// Cancels the deliveries of the event `event` names that a cancellation takes; `None` when
/// there is no such event.
pub(super) fn cancel(tx: &Transaction<'_>, event: &EventRef, now: Millis) -> Result<Option<Cancellation>, StoreError> {
    let Some(id) = resolve(tx, event)? else { return Ok(None) };
    let before = delivery_statuses(tx, &id)?;
    tx.prepare_cached(sql!("cancel_deliveries"))?
        .execute(params![id, now])?;
    rows::cancellation(&id, before).map(Some)
}

/// Erases the payload of the event `event` names once its deliveries are all final; `None`
/// when there is no such event.
pub(super) fn erase_payload(
    tx: &Transaction<'_>,
    event: &EventRef,
    now: Millis,
) -> Result<Option<(EventId, Erasure)>, StoreError> {
    let Some(id) = resolve(tx, event)? else { return Ok(None) };
    let erased_at: Option<Millis> = tx
        .prepare_cached(sql!("event_erased_at"))?
        .query_row([&id], |r| r.get(0))?;
    if let Some(at) = erased_at {
        return Ok(Some((rows::decode(&id)?, Erasure::AlreadyErased { at })));
    }
    let waiting = rows::not_final(delivery_statuses(tx, &id)?)?;
    if !waiting.is_empty() {
        return Ok(Some((rows::decode(&id)?, Erasure::NotFinal(waiting))));
    }
    tx.prepare_cached(sql!("erase_event_payload"))?
        .execute(params![id, now, ERASED_PAYLOAD, ERASED_HEADERS])?;
    Ok(Some((rows::decode(&id)?, Erasure::Erased { at: now })))
}

pub(super) fn erase_finished_payloads(
    tx: &Transaction<'_>,
    before: Millis,
    limit: usize,
    now: Millis,
) -> Result<usize, StoreError> {
    Ok(tx.prepare_cached(sql!("erase_finished_payloads"))?.execute(params![
        before,
        now,
        ERASED_PAYLOAD,
        ERASED_HEADERS,
        limit as i64
    ])?)
}

pub(super) fn hold_target(
    tx: &Transaction<'_>,
    target: &TargetName,
    reason: &str,
    now: Millis,
) -> Result<usize, StoreError> {
    Ok(tx
        .prepare_cached(sql!("hold_target"))?
        .execute(params![target.as_str(), reason, now])?)
}

/// Pauses the pending deliveries of targets not in `live`, resumes the paused ones in it.
pub(super) fn sync_paused(tx: &Transaction<'_>, live: &[TargetName]) -> Result<(usize, usize), StoreError> {
    tx.execute(sql!("create_live_targets"), [])?;
    tx.execute(sql!("clear_live_targets"), [])?;
    {
        let mut insert = tx.prepare_cached(sql!("insert_live_target"))?;
        for name in live {
            insert.execute([name.as_str()])?;
        }
    }
    let paused = tx.execute(sql!("pause_unloaded"), [])?;
    let resumed = tx.execute(sql!("resume_loaded"), [])?;
    tx.execute(sql!("clear_live_targets"), [])?;
    Ok((paused, resumed))
}

pub(super) fn prune_finished(tx: &Transaction<'_>, before: Millis, limit: usize) -> Result<usize, StoreError> {
    tx.execute(sql!("create_prune_events"), [])?;
    tx.execute(sql!("clear_prune_events"), [])?;
    let n = tx.execute(sql!("choose_finished_events"), params![before, limit as i64])?;
    delete_pruned_events(tx)?;
    Ok(n)
}

pub(super) fn prune_idempotency_keys(tx: &Transaction<'_>, before: Millis, limit: usize) -> Result<usize, StoreError> {
    Ok(tx.execute(sql!("prune_idempotency_keys"), params![before, limit as i64])?)
}

/// Deletes up to `limit` failed deliveries matching `filter` with their history, then the
/// events left with no delivery.
pub(super) fn prune_failed(tx: &Transaction<'_>, filter: &FailedFilter, limit: usize) -> Result<usize, StoreError> {
    tx.execute(sql!("create_prune_deliveries"), [])?;
    tx.execute(sql!("clear_prune_deliveries"), [])?;
    let (clause, params) = filters::failed_where(filter);
    let limit = limit as i64;
    let bind = filters::bind(&params, &[(":limit", &limit)]);
    let n = tx.prepare(&filters::choose_failed(&clause))?.execute(bind.as_slice())?;
    tx.execute(sql!("delete_pruned_delivery_attempts"), [])?;
    tx.execute(sql!("delete_pruned_deliveries"), [])?;
    tx.execute(sql!("create_prune_events"), [])?;
    tx.execute(sql!("clear_prune_events"), [])?;
    tx.execute(sql!("choose_emptied_events"), [])?;
    delete_pruned_events(tx)?;
    tx.execute(sql!("clear_prune_deliveries"), [])?;
    Ok(n)
}

/// Deletes the events listed in the temporary table `prune_events`, with their deliveries
/// and attempt history, and empties the list.
fn delete_pruned_events(tx: &Transaction<'_>) -> Result<(), StoreError> {
    tx.execute(sql!("delete_pruned_event_attempts"), [])?;
    tx.execute(sql!("delete_pruned_event_deliveries"), [])?;
    tx.execute(sql!("delete_pruned_events"), [])?;
    tx.execute(sql!("clear_prune_events"), [])?;
    Ok(())
}
