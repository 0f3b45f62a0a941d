//! Bulk replay jobs on PostgreSQL (the model: [`crate::store::replay_jobs`]): creating one with
//! its bound and total, reading and cancelling them, and one chunk of the oldest running job
//! no other host is working (its row locked `FOR UPDATE SKIP LOCKED` until the chunk commits),
//! its replay and the advance of its cursor and counts in the same transaction.

use sqlx::postgres::{PgConnection, PgPool};

use super::{counted, filters, wakeups};
use crate::domain::{Millis, ReplayJobStatus};
use crate::store::StoreError;
use crate::store::replay_jobs::{self, JobColumns, NewReplayJob, ReplayChunk, ReplayJob};

pub(super) async fn create(conn: &mut PgConnection, job: &NewReplayJob, now: Millis) -> Result<ReplayJob, StoreError> {
    let bound_id: i64 = counted::query_scalar(sql!("max_delivery_id"))
        .fetch_one(&mut *conn)
        .await?;
    counted::count(1);
    let (matched,): (i64,) = filters::count_failed(&job.bounded(bound_id, now))
        .build_query_as()
        .fetch_one(&mut *conn)
        .await?;
    let matched = matched.max(0) as u64;
    let total = job.cap.map_or(matched, |cap| matched.min(cap));
    let row: JobColumns = counted::query_as(sql!("insert_replay_job"))
        .bind(replay_jobs::encode_filter(&job.filter)?)
        .bind(job.after)
        .bind(bound_id)
        .bind(now)
        .bind(job.cap.map(|c| c.min(i64::MAX as u64) as i64))
        .bind(total as i64)
        .fetch_one(&mut *conn)
        .await?;
    Ok(replay_jobs::job(row)?.0)
}

pub(super) async fn get(pool: &PgPool, id: i64) -> Result<Option<ReplayJob>, StoreError> {
    let row: Option<JobColumns> = counted::query_as(sql!("select_replay_job"))
        .bind(id)
        .fetch_optional(pool)
        .await?;
    row.map(|r| replay_jobs::job(r).map(|(j, _)| j)).transpose()
}

pub(super) async fn list(pool: &PgPool, limit: usize) -> Result<Vec<ReplayJob>, StoreError> {
    let rows: Vec<JobColumns> = counted::query_as(sql!("list_replay_jobs"))
        .bind(limit as i64)
        .fetch_all(pool)
        .await?;
    rows.into_iter().map(|r| replay_jobs::job(r).map(|(j, _)| j)).collect()
}

pub(super) async fn cancel(conn: &mut PgConnection, id: i64, now: Millis) -> Result<Option<ReplayJob>, StoreError> {
    counted::query(sql!("cancel_replay_job"))
        .bind(id)
        .bind(now)
        .execute(&mut *conn)
        .await?;
    let row: Option<JobColumns> = counted::query_as(sql!("select_replay_job"))
        .bind(id)
        .fetch_optional(&mut *conn)
        .await?;
    row.map(|r| replay_jobs::job(r).map(|(j, _)| j)).transpose()
}

/// One chunk of the oldest running job (or of `job`, if it runs) that no other host is
/// working; `None` when there is none.
pub(super) async fn chunk(
    conn: &mut PgConnection,
    job: Option<i64>,
    size: usize,
    now: Millis,
) -> Result<Option<ReplayChunk>, StoreError> {
    let row: Option<JobColumns> = counted::query_as(sql!("next_running_replay_job"))
        .bind(job)
        .fetch_optional(&mut *conn)
        .await?;
    let Some(row) = row else { return Ok(None) };
    let (job, broken) = replay_jobs::job(row)?;
    if let Some(e) = broken {
        counted::query(sql!("fail_replay_job"))
            .bind(job.id)
            .bind(e.to_string())
            .bind(now)
            .execute(&mut *conn)
            .await?;
        return Ok(Some(ReplayChunk {
            job: job.id,
            replayed: 0,
            skipped: 0,
            status: ReplayJobStatus::Failed,
        }));
    }
    let size = job.chunk_size(size);
    let chosen: Vec<(i64, bool)> = if size == 0 {
        Vec::new()
    } else {
        counted::count(1);
        filters::choose_replay_window(&job.after_cursor(job.bound_id), size as i64)
            .build_query_as()
            .fetch_all(&mut *conn)
            .await?
    };
    let window = job.window(&chosen, size);
    let replayed = if window.up_to > job.cursor {
        counted::count(1);
        filters::replay_window(&job.after_cursor(window.up_to), now)
            .build()
            .execute(&mut *conn)
            .await?
            .rows_affected()
    } else {
        0
    };
    let status = window.status();
    counted::query(sql!("advance_replay_job"))
        .bind(job.id)
        .bind(window.up_to)
        .bind(replayed as i64)
        .bind(window.erased as i64)
        .bind(status.as_str())
        .bind(now)
        .execute(&mut *conn)
        .await?;
    if replayed > 0 {
        wakeups::notify(conn).await?;
    }
    Ok(Some(ReplayChunk {
        job: job.id,
        replayed,
        skipped: window.erased,
        status,
    }))
}
