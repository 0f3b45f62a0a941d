//! Scenarios of bulk replay jobs: chunks within the job's bound, the cursor a restarted host
//! resumes from, skipped erased events, the cap, cancellation, and several handles working
//! one job without replaying anything twice.

use std::collections::BTreeSet;

use super::admin::finish;
use super::{Backend, event, t};
use crate::domain::{DeliveryStatus, ReplayJobStatus};
use crate::store::{EventRef, FailedFilter, NewReplayJob, ReplayChunk, Store};

fn crm() -> FailedFilter {
    FailedFilter {
        target: Some(t("crm")),
        ..FailedFilter::default()
    }
}

/// The ids of `crm`'s deliveries that are failed now.
async fn still_failed(s: &dyn Store) -> BTreeSet<i64> {
    s.list_failed(crm(), 0, 1_000)
        .await
        .unwrap()
        .iter()
        .map(|d| d.delivery_id)
        .collect()
}

/// `n` events for crm, each delivery dead at `at`; their delivery ids, ascending.
async fn dead(s: &dyn Store, n: usize, at: i64) -> Vec<i64> {
    s.ingest((0..n).map(|_| event(None, &["crm"])).collect(), at)
        .await
        .unwrap();
    finish(s, "crm", DeliveryStatus::Dead, at, Some("HTTP 400")).await
}

fn chunk(job: i64, replayed: u64, skipped: u64, status: ReplayJobStatus) -> Option<ReplayChunk> {
    Some(ReplayChunk {
        job,
        replayed,
        skipped,
        status,
    })
}

pub(super) async fn a_replay_job_takes_what_failed_before_it_chunk_by_chunk(s: &dyn Store) {
    let ids = dead(s, 5, 10).await;
    // Pending when the job starts, dead after: not the job's.
    s.ingest(vec![event(None, &["crm"])], 15).await.unwrap();
    let erased = s
        .event(s.list_failed(crm(), ids[1], 1).await.unwrap()[0].event_id)
        .await
        .unwrap()
        .unwrap();
    s.erase_payload(EventRef::Id(erased.event.id), 16).await.unwrap();
    let job = s
        .create_replay_job(
            NewReplayJob {
                filter: crm(),
                ..NewReplayJob::default()
            },
            20,
        )
        .await
        .unwrap();
    assert_eq!(
        (job.status, job.total, job.replayed, job.skipped, job.cursor),
        (ReplayJobStatus::Running, 5, 0, 0, 0)
    );
    assert_eq!((job.failed_before, job.finished_at), (20, None));
    let late = finish(s, "crm", DeliveryStatus::Dead, 30, Some("HTTP 400")).await;
    assert_eq!(late.len(), 1);
    let after_start = dead(s, 1, 31).await;
    assert_eq!(still_failed(s).await.len(), 7);

    assert_eq!(
        s.replay_chunk(None, 2, 40).await.unwrap(),
        chunk(job.id, 2, 0, ReplayJobStatus::Running)
    );
    let mid = s.replay_job(job.id).await.unwrap().unwrap();
    assert_eq!((mid.cursor, mid.replayed, mid.updated_at), (ids[1], 2, 40));
    assert_eq!(
        s.replay_chunk(None, 2, 50).await.unwrap(),
        chunk(job.id, 1, 1, ReplayJobStatus::Running),
        "the erased event's delivery is skipped"
    );
    assert_eq!(
        s.replay_chunk(None, 2, 60).await.unwrap(),
        chunk(job.id, 1, 0, ReplayJobStatus::Done)
    );
    assert_eq!(s.replay_chunk(None, 2, 70).await.unwrap(), None, "no job left");
    let done = s.replay_job(job.id).await.unwrap().unwrap();
    assert_eq!(
        (done.status, done.total, done.replayed, done.skipped, done.finished_at),
        (ReplayJobStatus::Done, 5, 4, 1, Some(60))
    );

    let left = still_failed(s).await;
    let expected = BTreeSet::from([ids[2], late[0], after_start[0]]);
    assert_eq!(
        left, expected,
        "the erased event's delivery and the two that failed after the job started stay dead"
    );
    let again = s.claim(super::claim("crm", 10, "w", 80, 1_000)).await.unwrap();
    assert_eq!(again.len(), 4);
    assert!(again.iter().all(|c| c.attempt == 1), "the attempt count starts again");
}

pub(super) async fn a_replay_job_resumes_from_its_cursor_and_stops_when_cancelled(db: &dyn Backend) {
    // `a` starts the job and works a chunk; `b` is the host after a restart.
    let (a, b) = (db.open().await, db.open().await);
    let ids = dead(a.as_ref(), 6, 10).await;
    let job = a
        .create_replay_job(
            NewReplayJob {
                filter: crm(),
                ..NewReplayJob::default()
            },
            20,
        )
        .await
        .unwrap();
    assert_eq!(
        a.replay_chunk(None, 2, 30).await.unwrap(),
        chunk(job.id, 2, 0, ReplayJobStatus::Running)
    );
    // The two replayed die again: the job does not take them a second time.
    finish(a.as_ref(), "crm", DeliveryStatus::Dead, 31, Some("HTTP 400")).await;
    assert_eq!(
        b.replay_chunk(None, 2, 40).await.unwrap(),
        chunk(job.id, 2, 0, ReplayJobStatus::Running),
        "resumed after the cursor"
    );
    assert_eq!(
        still_failed(b.as_ref()).await,
        BTreeSet::from([ids[0], ids[1], ids[4], ids[5]])
    );

    let cancelled = b.cancel_replay_job(job.id, 50).await.unwrap().unwrap();
    assert_eq!(
        (cancelled.status, cancelled.replayed, cancelled.finished_at),
        (ReplayJobStatus::Cancelled, 4, Some(50))
    );
    assert_eq!(
        a.replay_chunk(None, 2, 60).await.unwrap(),
        None,
        "no chunk after a cancellation"
    );
    assert_eq!(still_failed(a.as_ref()).await.len(), 4, "the rest stays dead");
    let again = a.cancel_replay_job(job.id, 70).await.unwrap().unwrap();
    assert_eq!(again, cancelled, "a final job stays as it is");
    assert_eq!(a.cancel_replay_job(job.id + 1, 70).await.unwrap(), None);
    assert_eq!(a.replay_job(job.id + 1).await.unwrap(), None);

    let second = a
        .create_replay_job(
            NewReplayJob {
                filter: crm(),
                after: ids[4],
                cap: None,
            },
            80,
        )
        .await
        .unwrap();
    assert_eq!(second.total, 1, "only deliveries after `after`");
    let listed: Vec<_> = b.replay_jobs(10).await.unwrap().iter().map(|j| j.id).collect();
    assert_eq!(listed, [second.id, job.id], "newest first");
    assert_eq!(b.replay_jobs(1).await.unwrap().len(), 1);
}

pub(super) async fn a_capped_replay_job_stops_at_its_cap(s: &dyn Store) {
    dead(s, 5, 10).await;
    let job = s
        .create_replay_job(
            NewReplayJob {
                filter: crm(),
                after: 0,
                cap: Some(3),
            },
            20,
        )
        .await
        .unwrap();
    assert_eq!(job.total, 3, "the cap bounds the total");
    assert_eq!(
        s.replay_chunk(None, 2, 30).await.unwrap(),
        chunk(job.id, 2, 0, ReplayJobStatus::Running)
    );
    assert_eq!(
        s.replay_chunk(None, 2, 40).await.unwrap(),
        chunk(job.id, 1, 0, ReplayJobStatus::Done)
    );
    assert_eq!(still_failed(s).await.len(), 2);
    let nothing = s
        .create_replay_job(
            NewReplayJob {
                filter: FailedFilter {
                    target: Some(t("billing")),
                    ..FailedFilter::default()
                },
                ..NewReplayJob::default()
            },
            50,
        )
        .await
        .unwrap();
    assert_eq!(nothing.total, 0);
    assert_eq!(
        s.replay_chunk(None, 2, 60).await.unwrap(),
        chunk(nothing.id, 0, 0, ReplayJobStatus::Done),
        "a job with no match is done at its first chunk"
    );
}

pub(super) async fn handles_working_one_job_together_replay_each_delivery_once(db: &dyn Backend) {
    let (a, b) = (db.open().await, db.open().await);
    dead(a.as_ref(), 60, 10).await;
    let job = a
        .create_replay_job(
            NewReplayJob {
                filter: crm(),
                ..NewReplayJob::default()
            },
            20,
        )
        .await
        .unwrap();
    let id = job.id;
    let work = move |s: std::sync::Arc<dyn Store>| async move {
        let mut replayed = 0;
        // Another handle may hold the job for a moment: its chunk says nothing is waiting.
        for _ in 0..200 {
            match s.replay_chunk(None, 3, 30).await.unwrap() {
                Some(c) => replayed += c.replayed,
                None if s.replay_job(id).await.unwrap().unwrap().status.is_final() => break,
                None => tokio::task::yield_now().await,
            }
        }
        replayed
    };
    let (x, y) = tokio::join!(tokio::spawn(work(a.clone())), tokio::spawn(work(b.clone())));
    assert_eq!(x.unwrap() + y.unwrap(), 60, "the chunks replayed each delivery once");
    let done = a.replay_job(job.id).await.unwrap().unwrap();
    assert_eq!((done.status, done.replayed), (ReplayJobStatus::Done, 60));
    assert!(still_failed(a.as_ref()).await.is_empty());
}
