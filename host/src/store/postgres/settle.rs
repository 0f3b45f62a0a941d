//! Settling in sets: one statement writes the batch's outcomes on the deliveries whose lease
//! still holds (`UPDATE … FROM unnest(…)`, in id order, each row checked for its owner, its
//! attempt and `in_flight`), one writes every attempt's history row either way, and the
//! operational events of the outcomes whose lease held are ingested in the same transaction.
//! After its commit, one statement of its own adds the batch to the per-version counters.

use std::collections::HashSet;

use sqlx::postgres::{PgConnection, PgPool};

use super::counted;
use super::ingest::insert_events;
use crate::domain::{Millis, now_ms};
use crate::store::history::{started_at, version_counts};
use crate::store::{SettleReport, Settlement, StoreError};

/// One settle batch, already in [`settle_order`](crate::store::history::settle_order).
pub(super) async fn settle(
    conn: &mut PgConnection,
    owner: &str,
    batch: &[Settlement],
) -> Result<SettleReport, StoreError> {
    let ids: Vec<i64> = batch.iter().map(|s| s.delivery_id).collect();
    let seqs: Vec<i32> = batch.iter().map(|s| s.seq as i32).collect();
    let errors: Vec<Option<&str>> = batch.iter().map(|s| s.last_error.as_deref()).collect();
    let changed: Vec<(i64, i32)> = counted::query_as(sql!("settle_deliveries"))
        .bind(&ids)
        .bind(&seqs)
        .bind(batch.iter().map(|s| s.status.as_str()).collect::<Vec<_>>())
        .bind(batch.iter().map(|s| s.next_attempt_at).collect::<Vec<Millis>>())
        .bind(&errors)
        .bind(batch.iter().map(|s| s.finished_at).collect::<Vec<Millis>>())
        .bind(owner)
        .fetch_all(&mut *conn)
        .await?;
    let held: HashSet<(i64, i32)> = changed.into_iter().collect();
    let mut report = SettleReport::default();
    let mut emitted = Vec::new();
    for s in batch {
        if held.contains(&(s.delivery_id, s.seq as i32)) {
            emitted.extend(s.emit.iter().cloned());
        } else {
            report.lost_leases.push(s.delivery_id);
        }
    }
    // The attempt happened either way: the history keeps what it did.
    let starts: Vec<i64> = batch.iter().map(started_at).collect();
    let durations: Vec<i64> = batch.iter().map(|s| s.duration_ms as i64).collect();
    let outcomes: Vec<&str> = batch.iter().map(|s| s.outcome.as_str()).collect();
    let hashes: Vec<Option<&str>> = batch.iter().map(|s| s.plugin_hash.as_deref()).collect();
    let statuses: Vec<Option<i32>> = batch
        .iter()
        .map(|s| s.response.as_ref().map(|r| i32::from(r.status)))
        .collect();
    let bodies: Vec<Option<&str>> = batch
        .iter()
        .map(|s| s.response.as_ref().map(|r| r.body.as_str()))
        .collect();
    let details: Vec<Option<&str>> = batch.iter().map(|s| s.detail.as_deref()).collect();
    counted::query(sql!("record_attempts"))
        .bind(&ids)
        .bind(&seqs)
        .bind(&starts)
        .bind(&durations)
        .bind(&outcomes)
        .bind(&errors)
        .bind(&hashes)
        .bind(owner)
        .bind(&statuses)
        .bind(&bodies)
        .bind(&details)
        .execute(&mut *conn)
        .await?;
    if !emitted.is_empty() {
        insert_events(conn, &emitted, now_ms()).await?;
    }
    Ok(report)
}

/// Adds a settled batch's attempts to the per-version counters, in key order, on its own after
/// the settle has committed: these rows are shared by every host, and inside the settle they
/// stayed locked until its commit and WAL flush, so that the settles of all hosts took turns.
/// They are statistics (`GET /v1/targets`): a crash between the two loses a batch's count, not
/// an outcome.
pub(super) async fn count_versions(pool: &PgPool, batch: &[Settlement]) -> Result<(), StoreError> {
    let counts = version_counts(batch);
    if counts.is_empty() {
        return Ok(());
    }
    let (keys, n): (Vec<(&str, &str)>, Vec<i64>) = counts.into_iter().unzip();
    counted::query(sql!("count_version_attempts"))
        .bind(keys.iter().map(|k| k.0).collect::<Vec<_>>())
        .bind(keys.iter().map(|k| k.1).collect::<Vec<_>>())
        .bind(n)
        .execute(pool)
        .await?;
    Ok(())
}
