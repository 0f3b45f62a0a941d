//! Bulk replay jobs on SQLite (the model: [`crate::store::replay_jobs`]): creating one with
//! its bound and total, reading and cancelling them, and one chunk of the oldest running job,
//! its replay and the advance of its cursor and counts in the same transaction.

use rusqlite::{OptionalExtension, Transaction, params};

use super::filters;
use crate::domain::Millis;
use crate::store::replay_jobs::{self, JobColumns, NewReplayJob, ReplayChunk, ReplayJob};
use crate::store::{FailedFilter, StoreError};

fn columns(r: &rusqlite::Row<'_>) -> rusqlite::Result<JobColumns> {
    Ok((
        r.get(0)?,
        r.get(1)?,
        r.get(2)?,
        r.get(3)?,
        r.get(4)?,
        r.get(5)?,
        r.get(6)?,
        r.get(7)?,
        r.get(8)?,
        r.get(9)?,
        r.get(10)?,
        r.get(11)?,
        r.get(12)?,
        r.get(13)?,
        r.get(14)?,
    ))
}

fn count(tx: &Transaction<'_>, filter: &FailedFilter) -> Result<u64, StoreError> {
    let (clause, params) = filters::failed_where(filter);
    let bind = filters::bind(&params, &[]);
    let n: i64 = tx
        .prepare(&filters::count_failed(&clause))?
        .query_row(bind.as_slice(), |r| r.get(0))?;
    Ok(n.max(0) as u64)
}

pub(super) fn create(tx: &Transaction<'_>, job: &NewReplayJob, now: Millis) -> Result<ReplayJob, StoreError> {
    let bound_id: i64 = tx
        .prepare_cached(sql!("max_delivery_id"))?
        .query_row([], |r| r.get(0))?;
    let matched = count(tx, &job.bounded(bound_id, now))?;
    let total = job.cap.map_or(matched, |cap| matched.min(cap));
    let row = tx.prepare_cached(sql!("insert_replay_job"))?.query_row(
        params![
            replay_jobs::encode_filter(&job.filter)?,
            job.after,
            bound_id,
            now,
            job.cap.map(|c| c.min(i64::MAX as u64) as i64),
            total as i64
        ],
        columns,
    )?;
    Ok(replay_jobs::job(row)?.0)
}

pub(super) fn get(tx: &Transaction<'_>, id: i64) -> Result<Option<ReplayJob>, StoreError> {
    let row = tx
        .prepare_cached(sql!("select_replay_job"))?
        .query_row([id], columns)
        .optional()?;
    row.map(|r| replay_jobs::job(r).map(|(j, _)| j)).transpose()
}

pub(super) fn list(tx: &Transaction<'_>, limit: usize) -> Result<Vec<ReplayJob>, StoreError> {
    let rows = tx
        .prepare_cached(sql!("list_replay_jobs"))?
        .query_map([limit as i64], columns)?
        .collect::<Result<Vec<_>, _>>()?;
    rows.into_iter().map(|r| replay_jobs::job(r).map(|(j, _)| j)).collect()
}

pub(super) fn cancel(tx: &Transaction<'_>, id: i64, now: Millis) -> Result<Option<ReplayJob>, StoreError> {
    tx.prepare_cached(sql!("cancel_replay_job"))?
        .execute(params![id, now])?;
    get(tx, id)
}

/// One chunk of the oldest running job (or of `job`, if it runs); `None` when there is none.
pub(super) fn chunk(
    tx: &Transaction<'_>,
    job: Option<i64>,
    size: usize,
    now: Millis,
) -> Result<Option<ReplayChunk>, StoreError> {
    let row = tx
        .prepare_cached(sql!("next_running_replay_job"))?
        .query_row([job], columns)
        .optional()?;
    let Some(row) = row else { return Ok(None) };
    let (job, broken) = replay_jobs::job(row)?;
    if let Some(e) = broken {
        tx.prepare_cached(sql!("fail_replay_job"))?
            .execute(params![job.id, e.to_string(), now])?;
        return Ok(Some(ReplayChunk {
            job: job.id,
            replayed: 0,
            skipped: 0,
            status: crate::domain::ReplayJobStatus::Failed,
        }));
    }
    let size = job.chunk_size(size);
    let chosen: Vec<(i64, bool)> = if size == 0 {
        Vec::new()
    } else {
        let (clause, params) = filters::failed_where(&job.after_cursor(job.bound_id));
        let limit = size as i64;
        let bind = filters::bind(&params, &[(":limit", &limit)]);
        tx.prepare(&filters::choose_replay_window(&clause))?
            .query_map(bind.as_slice(), |r| Ok((r.get(0)?, r.get(1)?)))?
            .collect::<Result<_, _>>()?
    };
    let window = job.window(&chosen, size);
    let replayed = if window.up_to > job.cursor {
        let (clause, params) = filters::failed_where(&job.after_cursor(window.up_to));
        let limit = i64::MAX;
        let bind = filters::bind(&params, &[(":now", &now), (":limit", &limit)]);
        tx.prepare(&filters::replay(&clause))?.execute(bind.as_slice())? as u64
    } else {
        0
    };
    let status = window.status();
    tx.prepare_cached(sql!("advance_replay_job"))?.execute(params![
        job.id,
        window.up_to,
        replayed as i64,
        window.erased as i64,
        status.as_str(),
        now
    ])?;
    Ok(Some(ReplayChunk {
        job: job.id,
        replayed,
        skipped: window.erased,
        status,
    }))
}
