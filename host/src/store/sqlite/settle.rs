//! Settling: attempt outcomes written on their deliveries while the lease holds, each
//! attempt's one history row either way, the per-version counters, and the operational events
//! of the outcomes whose lease held.

use rusqlite::{Transaction, params};

use super::ingest::insert_events;
use crate::domain::now_ms;
use crate::store::history::{settle_order, started_at, version_counts};
use crate::store::{SettleReport, Settlement, StoreError};

/// One settle batch (see [`Store::settle`](crate::store::Store::settle)).
pub(super) fn settle(tx: &Transaction<'_>, owner: &str, batch: Vec<Settlement>) -> Result<SettleReport, StoreError> {
    let mut batch = settle_order(batch);
    let mut report = SettleReport::default();
    let mut emitted = Vec::new();
    let mut update = tx.prepare_cached(sql!("settle_delivery"))?;
    let mut record = tx.prepare_cached(sql!("record_attempt"))?;
    for s in &mut batch {
        let changed = update.execute(params![
            s.status.as_str(),
            s.next_attempt_at,
            s.last_error,
            s.finished_at,
            s.delivery_id,
            owner,
            s.seq,
        ])?;
        if changed == 0 {
            report.lost_leases.push(s.delivery_id);
        } else {
            emitted.append(&mut s.emit);
        }
        // The attempt happened either way: the history keeps what it did.
        record.execute(params![
            s.delivery_id,
            s.seq,
            started_at(s),
            s.duration_ms as i64,
            s.outcome.as_str(),
            s.last_error,
            s.plugin_hash,
            s.response.as_ref().map(|r| r.status),
            s.response.as_ref().map(|r| r.body.as_str()),
            s.detail,
        ])?;
    }
    let mut count_version = tx.prepare_cached(sql!("count_version_attempts"))?;
    for ((target, hash), n) in version_counts(&batch) {
        count_version.execute(params![target, hash, n])?;
    }
    if !emitted.is_empty() {
        insert_events(tx, emitted, now_ms())?;
    }
    Ok(report)
}
