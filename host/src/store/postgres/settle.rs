//! Settling: attempt outcomes written on their deliveries (in id order) while the lease holds,
//! each attempt's one history row either way (one statement for the batch), the per-version
//! counters (in key order: hot rows shared by hosts), and the operational events of the
//! outcomes whose lease held.

use sqlx::postgres::PgConnection;

use super::counted;
use super::ingest::insert_events;
use crate::domain::now_ms;
use crate::store::history::{started_at, version_counts};
use crate::store::{SettleReport, Settlement, StoreError};

/// One settle batch, already in [`settle_order`](crate::store::history::settle_order).
pub(super) async fn settle(
    conn: &mut PgConnection,
    owner: &str,
    batch: &[Settlement],
) -> Result<SettleReport, StoreError> {
    let mut report = SettleReport::default();
    let mut emitted = Vec::new();
    for s in batch {
        let changed = counted::query(sql!("settle_delivery"))
            .bind(s.status.as_str())
            .bind(s.next_attempt_at)
            .bind(&s.last_error)
            .bind(s.finished_at)
            .bind(s.delivery_id)
            .bind(owner)
            .bind(s.seq as i32)
            .execute(&mut *conn)
            .await?
            .rows_affected();
        if changed == 0 {
            report.lost_leases.push(s.delivery_id);
        } else {
            emitted.extend(s.emit.iter().cloned());
        }
    }
    // The attempt happened either way: the history keeps what it did.
    let ids: Vec<i64> = batch.iter().map(|s| s.delivery_id).collect();
    let seqs: Vec<i32> = batch.iter().map(|s| s.seq as i32).collect();
    let starts: Vec<i64> = batch.iter().map(started_at).collect();
    let durations: Vec<i64> = batch.iter().map(|s| s.duration_ms as i64).collect();
    let outcomes: Vec<&str> = batch.iter().map(|s| s.outcome.as_str()).collect();
    let errors: Vec<Option<&str>> = batch.iter().map(|s| s.last_error.as_deref()).collect();
    let hashes: Vec<Option<&str>> = batch.iter().map(|s| s.plugin_hash.as_deref()).collect();
    counted::query(sql!("record_attempts"))
        .bind(&ids)
        .bind(&seqs)
        .bind(&starts)
        .bind(&durations)
        .bind(&outcomes)
        .bind(&errors)
        .bind(&hashes)
        .bind(owner)
        .execute(&mut *conn)
        .await?;
    for ((target, hash), n) in version_counts(batch) {
        counted::query(sql!("count_version_attempts"))
            .bind(target)
            .bind(hash)
            .bind(n)
            .execute(&mut *conn)
            .await?;
    }
    if !emitted.is_empty() {
        insert_events(conn, &emitted, now_ms()).await?;
    }
    Ok(report)
}
