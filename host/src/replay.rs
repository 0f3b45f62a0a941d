//! Bulk replay jobs at work: `serve`'s one worker task, which works the store's running replay
//! jobs one chunk at a time (the model and the chunk's transaction are the store's,
//! `store::replay_jobs`), wakes the idle lanes after each chunk that replayed something, and
//! looks for jobs when the API creates one (a kick), every poll interval (jobs created by the
//! CLI or by another host) and at start-up (jobs a stopped or killed host left running: they
//! resume from their cursor). One chunk at a time per host; on PostgreSQL one host at a time
//! per job. The CLI works its own job with [`work_chunk`] too when it follows it.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::domain::{ReplayJobStatus, now_ms};
use crate::store::{REPLAY_CHUNK, ReplayChunk, Store, StoreError};
use crate::telemetry::metrics;

/// How often the worker looks for jobs it was not told about.
pub const POLL: Duration = Duration::from_secs(1);

/// Works one chunk of `job` (or of the oldest running job), counting it. `None` when there is
/// no such job waiting.
pub async fn work_chunk(store: &dyn Store, job: Option<i64>) -> Result<Option<ReplayChunk>, StoreError> {
    let chunk = store.replay_chunk(job, REPLAY_CHUNK, now_ms()).await?;
    if let Some(c) = &chunk {
        metrics::replay_chunk(c.replayed, c.skipped);
        match c.status {
            ReplayJobStatus::Running => {}
            ReplayJobStatus::Failed => tracing::error!(job = c.job, "replay job failed: see GET /v1/replays/{}", c.job),
            status => tracing::info!(job = c.job, status = status.as_str(), "replay job finished"),
        }
    }
    Ok(chunk)
}

/// `serve`'s worker: works running jobs until `stop`, waking `lanes` after each chunk that
/// replayed something. `kick` says a job was just created.
pub async fn run(
    store: Arc<dyn Store>,
    lanes: Arc<Notify>,
    kick: Arc<Notify>,
    poll: Duration,
    stop: CancellationToken,
) {
    loop {
        // Registered before looking, so that a kick while a chunk runs is not lost.
        let kicked = kick.notified();
        tokio::pin!(kicked);
        kicked.as_mut().enable();
        loop {
            if stop.is_cancelled() {
                return;
            }
            match work_chunk(store.as_ref(), None).await {
                Ok(Some(c)) => {
                    if c.replayed > 0 {
                        lanes.notify_waiters();
                    }
                }
                Ok(None) => break,
                Err(e) => {
                    tracing::warn!(error = %e, "a replay job's chunk failed (nothing of it was kept); trying again");
                    break;
                }
            }
        }
        tokio::select! {
            _ = &mut kicked => {}
            _ = tokio::time::sleep(poll) => {}
            _ = stop.cancelled() => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::{AttemptOutcome, DeliveryStatus, EventId, EventType};
    use crate::store::sqlite::SqliteStore;
    use crate::store::{ClaimRequest, FailedFilter, NewEvent, NewReplayJob, Settlement};

    /// A store with `n` dead deliveries of `crm`.
    async fn dead(n: usize) -> (tempfile::TempDir, Arc<dyn Store>) {
        let dir = tempfile::tempdir().unwrap();
        let store: Arc<dyn Store> = Arc::new(SqliteStore::open(&dir.path().join("o.db")).unwrap());
        let events = (0..n)
            .map(|_| NewEvent {
                id: EventId::new(),
                event_type: EventType::try_from("order.created".to_string()).unwrap(),
                payload: "{}".into(),
                headers: Vec::new(),
                idempotency_key: None,
                ordering_key: None,
                targets: vec!["crm".parse().unwrap()],
                due_at: None,
                traceparent: None,
            })
            .collect();
        store.ingest(events, 0).await.unwrap();
        let claimed = store
            .claim(ClaimRequest {
                target: "crm".parse().unwrap(),
                limit: n,
                owner: "w".into(),
                now: 0,
                lease_ms: 60_000,
                ordered: false,
            })
            .await
            .unwrap();
        let batch = claimed
            .iter()
            .map(|c| Settlement {
                target: c.target.clone(),
                delivery_id: c.delivery_id,
                seq: c.seq,
                status: DeliveryStatus::Dead,
                next_attempt_at: 0,
                last_error: Some("HTTP 400".into()),
                outcome: AttemptOutcome::Permanent,
                finished_at: 1,
                duration_ms: 1,
                plugin_hash: None,
                response: None,
                detail: None,
                emit: Vec::new(),
            })
            .collect();
        store.settle("w", batch).await.unwrap();
        (dir, store)
    }

    #[tokio::test(start_paused = true)]
    async fn the_worker_finishes_a_job_it_is_kicked_for_and_wakes_the_lanes() {
        let (_dir, store) = dead(REPLAY_CHUNK + 5).await;
        let (lanes, kick, stop) = (
            Arc::new(Notify::new()),
            Arc::new(Notify::new()),
            CancellationToken::new(),
        );
        let woken = lanes.notified();
        tokio::pin!(woken);
        woken.as_mut().enable();
        let worker = tokio::spawn(run(
            Arc::clone(&store),
            Arc::clone(&lanes),
            Arc::clone(&kick),
            Duration::from_secs(3_600),
            stop.clone(),
        ));
        // Idle: nothing to do until told (the poll is an hour away).
        tokio::task::yield_now().await;
        let job = store
            .create_replay_job(
                NewReplayJob {
                    filter: FailedFilter::default(),
                    ..NewReplayJob::default()
                },
                now_ms(),
            )
            .await
            .unwrap();
        let kicked_at = tokio::time::Instant::now();
        kick.notify_one();
        let done = loop {
            let j = store.replay_job(job.id).await.unwrap().unwrap();
            if j.status.is_final() {
                break j;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        };
        assert!(
            kicked_at.elapsed() < Duration::from_secs(3_600),
            "worked at the kick, not the poll"
        );
        assert_eq!(
            (done.status, done.replayed, done.total),
            (ReplayJobStatus::Done, REPLAY_CHUNK as u64 + 5, REPLAY_CHUNK as u64 + 5)
        );
        woken.await;
        stop.cancel();
        worker.await.unwrap();
    }
}
