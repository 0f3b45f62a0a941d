//! The settler: one task that writes attempt outcomes in batches. Whatever is queued when a
//! write starts goes in one transaction (up to [`SETTLE_BATCH`]); under load, writes are
//! paced [`SETTLE_PACE`] apart so that outcomes gather into fewer, larger transactions, and
//! while a stream of outcomes fills them, a write waits for [`SETTLE_FLOOR`] outcomes (at
//! most [`SETTLE_FLOOR_WAIT`] after the previous write began): a settle's cost is its
//! commit, not its rows, so its size follows the stream, not the time a commit takes. An
//! outcome something waits for ([`Queued::awaited`]) is written without waiting for a floor. A
//! failed write is retried for as long as the store is down (the heartbeat keeps the
//! deliveries' leases meanwhile, and a full queue holds attempts back); only a stopping host
//! gives up after [`MAX_FAILURES`] tries, and the next start or another host's sweeper
//! returns what it held. An outage of any length therefore strands nothing. Operational events
//! that a write stored (their delivery's lease still held) are counted by the front door.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::outbox::{Origin, Outbox};
use crate::store::{SettleReport, Settlement, Store};

/// Most outcomes written in one settle transaction.
const SETTLE_BATCH: usize = 256;
/// Outcomes waiting to be written; a full queue makes attempts wait (backpressure).
const SETTLE_QUEUE: usize = 4096;
/// Least time between the starts of two settle transactions. Each one ends with an fsync
/// that holds the single writer (and so every claim) for about a millisecond; pacing them
/// lets outcomes gather into fewer, larger transactions under load. Outside a stream (see
/// [`SETTLE_FLOOR`]) outcomes wait at most this long; leases keep their deliveries safe
/// meanwhile.
const SETTLE_PACE: Duration = Duration::from_millis(4);
/// Outcomes a write waits for while a stream of them is under way: about 20 ms of a busy
/// host's deliveries on a fast 2-core machine, 40 ms on a slow one. Below it, a settle's
/// commit (a WAL flush that every host's settles and claims queue behind) is shared by too
/// few deliveries; above it, little more is saved.
const SETTLE_FLOOR: usize = 128;
/// Longest a write waits for its floor, counted from the previous write's start: an outcome
/// of a stream is written at most this late. Two PostgreSQL hosts on a slow server's two
/// cores each settle about 3,000 outcomes a second: 50 ms gathers their floor.
const SETTLE_FLOOR_WAIT: Duration = Duration::from_millis(50);
/// A stream is under way when the previous write, begun within [`SETTLE_FLOOR_WAIT`], held
/// at least this many outcomes. A trickle (a quiet host) is written at the pace, never held
/// for a floor.
const STREAM_MIN: usize = 16;
/// How often a failing write is tried by a stopping host before its outcomes are dropped
/// (their leases then expire, or the next start returns them, and they are attempted again).
const MAX_FAILURES: u32 = 10;
/// Longest pause between two tries of a failing write.
const MAX_RETRY_PAUSE: Duration = Duration::from_secs(5);

/// An outcome on its way to the store.
pub(super) struct Queued {
    pub settlement: Settlement,
    /// Something waits for this settle: the next delivery of an ordered target's key is
    /// claimable only once this one is settled. Its write waits for no floor.
    pub awaited: bool,
}

/// Starts the settler. It ends once every sender is dropped and the queue is written (after
/// `stop`, a write that keeps failing is given up).
pub(super) fn spawn(
    store: Arc<dyn Store>,
    owner: String,
    outbox: Outbox,
    stop: CancellationToken,
) -> (mpsc::Sender<Queued>, JoinHandle<()>) {
    let (tx, rx) = mpsc::channel(SETTLE_QUEUE);
    (tx, tokio::spawn(run(store, owner, outbox, rx, stop)))
}

async fn run(
    store: Arc<dyn Store>,
    owner: String,
    outbox: Outbox,
    mut rx: mpsc::Receiver<Queued>,
    stop: CancellationToken,
) {
    let mut batch = Vec::with_capacity(SETTLE_BATCH);
    let mut last = Instant::now();
    let mut last_len = 0;
    while rx.recv_many(&mut batch, SETTLE_BATCH).await > 0 {
        gather(&mut rx, &mut batch, last, last_len).await;
        last = Instant::now();
        last_len = batch.len();
        let settlements: Vec<Settlement> = batch.drain(..).map(|q| q.settlement).collect();
        if let Some(report) = write(store.as_ref(), &owner, &settlements, &stop).await {
            let emitted: usize = settlements
                .iter()
                .filter(|s| !report.lost_leases.contains(&s.delivery_id))
                .map(|s| s.emit.len())
                .sum();
            if emitted > 0 {
                outbox.stored(Origin::Operational, emitted, 0);
            }
        }
    }
}

/// Lets the next outcomes join `batch` before it is written: under load, until
/// [`SETTLE_PACE`] after the previous write began (`last`); while a stream is under way (the
/// previous write held `last_len` >= [`STREAM_MIN`]), until the batch holds [`SETTLE_FLOOR`]
/// or [`SETTLE_FLOOR_WAIT`] has passed since `last`, or an outcome that is awaited joins it.
/// Returns early once the queue is closed.
async fn gather(rx: &mut mpsc::Receiver<Queued>, batch: &mut Vec<Queued>, last: Instant, last_len: usize) {
    if batch.len() < SETTLE_BATCH && last.elapsed() < SETTLE_PACE {
        tokio::time::sleep_until(last + SETTLE_PACE).await;
        while batch.len() < SETTLE_BATCH {
            match rx.try_recv() {
                Ok(s) => batch.push(s),
                Err(_) => break,
            }
        }
    }
    if last_len < STREAM_MIN || last.elapsed() >= SETTLE_FLOOR_WAIT {
        return;
    }
    let deadline = tokio::time::sleep_until(last + SETTLE_FLOOR_WAIT);
    tokio::pin!(deadline);
    let mut seen = 0;
    while batch.len() < SETTLE_FLOOR && !batch[seen..].iter().any(|q| q.awaited) {
        seen = batch.len();
        tokio::select! {
            n = rx.recv_many(batch, SETTLE_BATCH - batch.len()) => if n == 0 { return },
            _ = &mut deadline => return,
        }
    }
}

/// Writes one batch, retrying a failing store with a growing pause (at most
/// [`MAX_RETRY_PAUSE`]) until it succeeds. `None` when the host is stopping and the write
/// kept failing: the outcomes are dropped.
async fn write(store: &dyn Store, owner: &str, batch: &[Settlement], stop: &CancellationToken) -> Option<SettleReport> {
    let mut failures = 0u32;
    loop {
        match store.settle(owner, batch.to_vec()).await {
            Ok(report) => {
                if failures > 0 {
                    tracing::info!(failures, count = batch.len(), "settle succeeded after failing");
                }
                for id in &report.lost_leases {
                    tracing::warn!(
                        delivery = id,
                        "lease lost before settling; another worker owns the delivery now"
                    );
                }
                return Some(report);
            }
            Err(e) if stop.is_cancelled() && failures >= MAX_FAILURES => {
                tracing::error!(
                    error = %e, count = batch.len(),
                    "settle keeps failing while stopping; dropping these outcomes, their deliveries go back to \
                     pending when their leases expire or at the next start, and are attempted again"
                );
                return None;
            }
            Err(e) => {
                failures += 1;
                tracing::error!(error = %e, failures, count = batch.len(), "settle failed; keeping the outcomes and retrying");
                let pause = (Duration::from_millis(100) * failures).min(MAX_RETRY_PAUSE);
                tokio::select! {
                    _ = tokio::time::sleep(pause) => {}
                    // Stopping: try again now rather than at the end of a long pause.
                    _ = stop.cancelled(), if !stop.is_cancelled() => {}
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use tokio::sync::Notify;

    use super::*;
    use crate::dispatch::testing::FakeStore;
    use crate::domain::DeliveryStatus;
    use crate::outbox::{Routing, operational_event};
    use crate::targets::routing::Routes;

    fn outcome(id: i64) -> Queued {
        Queued {
            settlement: Settlement::delivered("crm", id, 0),
            awaited: false,
        }
    }

    fn settler(store: &Arc<FakeStore>, wake: &Arc<Notify>) -> (mpsc::Sender<Queued>, JoinHandle<()>) {
        let dyn_store: Arc<dyn Store> = Arc::clone(store) as Arc<dyn Store>;
        let outbox = Outbox::new(
            Arc::clone(&dyn_store),
            Routing::Fixed(Arc::new(Routes::default())),
            Arc::clone(wake),
        );
        spawn(dyn_store, "me".into(), outbox, CancellationToken::new())
    }

    fn batch_sizes(store: &FakeStore) -> Vec<usize> {
        store.with(|s| s.settled.iter().map(Vec::len).collect())
    }

    #[tokio::test(start_paused = true)]
    async fn outcomes_that_queue_during_a_write_share_the_next_one() {
        let store = Arc::new(FakeStore::default());
        let (tx, task) = settler(&store, &Arc::default());
        tokio::time::sleep(SETTLE_PACE).await;
        tx.send(outcome(0)).await.unwrap();
        tokio::time::sleep(Duration::from_micros(100)).await;
        assert_eq!(
            batch_sizes(&store),
            [1],
            "after a quiet moment, a lone outcome is written at once"
        );
        for id in 1..=300 {
            tx.send(outcome(id)).await.unwrap();
        }
        drop(tx);
        task.await.unwrap();
        // A full batch goes at once; the rest waits out the pace and goes together.
        assert_eq!(batch_sizes(&store), [1, SETTLE_BATCH, 300 - SETTLE_BATCH]);
        let ids: Vec<i64> = store.with(|s| s.settled.iter().flatten().map(|s| s.delivery_id).collect());
        assert_eq!(ids, (0..=300).collect::<Vec<_>>(), "every outcome once, in order");
    }

    #[tokio::test(start_paused = true)]
    async fn outcomes_arriving_within_the_pace_gather_into_one_write() {
        let store = Arc::new(FakeStore::default());
        let (tx, task) = settler(&store, &Arc::default());
        tokio::time::sleep(SETTLE_PACE).await;
        tx.send(outcome(0)).await.unwrap();
        for id in 1..=3 {
            tokio::time::sleep(Duration::from_millis(1)).await;
            tx.send(outcome(id)).await.unwrap();
        }
        drop(tx);
        task.await.unwrap();
        assert_eq!(batch_sizes(&store), [1, 3], "one write per pace under a steady trickle");
    }

    /// A settler that has just been sent 40 outcomes after a quiet moment: once they are
    /// written, a stream is under way.
    async fn stream_begun() -> (Arc<FakeStore>, mpsc::Sender<Queued>, JoinHandle<()>) {
        let store = Arc::new(FakeStore::default());
        let (tx, task) = settler(&store, &Arc::default());
        tokio::time::sleep(SETTLE_PACE).await;
        for id in 0..40 {
            tx.send(outcome(id)).await.unwrap();
        }
        (store, tx, task)
    }

    /// Sends `count` outcomes from `first` on, `per_ms` each millisecond, after a first
    /// millisecond in which the settler writes what came before.
    async fn stream(tx: &mpsc::Sender<Queued>, first: i64, count: i64, per_ms: usize) {
        let ids: Vec<i64> = (first..first + count).collect();
        for ms in ids.chunks(per_ms) {
            tokio::time::sleep(Duration::from_millis(1)).await;
            for &id in ms {
                tx.send(outcome(id)).await.unwrap();
            }
        }
    }

    #[tokio::test(start_paused = true)]
    async fn under_a_stream_of_outcomes_a_write_waits_for_its_floor() {
        let (store, tx, task) = stream_begun().await;
        // Ten outcomes a millisecond: a 4 ms pace alone would write them forty at a time.
        stream(&tx, 40, 600, 10).await;
        drop(tx);
        task.await.unwrap();
        let sizes = batch_sizes(&store);
        assert_eq!(
            sizes[0], 40,
            "the first write, after a quiet moment, at once: {sizes:?}"
        );
        let (last, middle) = sizes[1..].split_last().unwrap();
        assert!(
            middle.iter().all(|&n| n >= SETTLE_FLOOR),
            "each write of the stream waited for its floor: {sizes:?}"
        );
        assert!(*last <= SETTLE_BATCH, "{sizes:?}");
        let ids: Vec<i64> = store.with(|s| s.settled.iter().flatten().map(|s| s.delivery_id).collect());
        assert_eq!(ids, (0..640).collect::<Vec<_>>(), "every outcome once, in order");
    }

    #[tokio::test(start_paused = true)]
    async fn a_thin_stream_waits_for_its_floor_no_longer_than_the_floor_wait() {
        let (store, tx, task) = stream_begun().await;
        // One outcome a millisecond: the floor is never reached in time.
        stream(&tx, 40, 400, 1).await;
        let sizes = batch_sizes(&store);
        assert_eq!(sizes[0], 40);
        let per_wait = SETTLE_FLOOR_WAIT.as_millis() as usize;
        assert!(per_wait < SETTLE_FLOOR);
        let waits = &sizes[1..];
        assert!(
            waits.len() >= 7 && waits.iter().all(|&n| (per_wait - 2..=per_wait + 2).contains(&n)),
            "a write every {per_wait} ms, each with what that time brought: {sizes:?}"
        );
        drop(tx);
        task.await.unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn an_awaited_outcome_is_not_held_for_a_streams_floor() {
        let (store, tx, task) = stream_begun().await;
        tokio::time::sleep(Duration::from_millis(1)).await;
        assert_eq!(batch_sizes(&store), [40], "a stream is under way");
        tx.send(outcome(40)).await.unwrap();
        tokio::time::sleep(SETTLE_PACE).await;
        assert_eq!(batch_sizes(&store), [40], "a plain outcome waits for the floor");
        // An ordered target's outcome: its key's next delivery waits for this settle.
        let mut next = outcome(41);
        next.awaited = true;
        tx.send(next).await.unwrap();
        tokio::time::sleep(Duration::from_millis(1)).await;
        assert_eq!(batch_sizes(&store), [40, 2], "written at once, with what was waiting");
        drop(tx);
        task.await.unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn one_outcome_at_a_time_is_never_held_for_a_floor() {
        let store = Arc::new(FakeStore::default());
        let (tx, task) = settler(&store, &Arc::default());
        tokio::time::sleep(SETTLE_PACE).await;
        // Each outcome waits for the previous one's write: a trickle.
        for id in 0..20 {
            tx.send(outcome(id)).await.unwrap();
            let sent = Instant::now();
            while store.with(|s| s.settled.iter().flatten().count()) <= id as usize {
                tokio::time::sleep(Duration::from_micros(100)).await;
            }
            assert!(sent.elapsed() <= SETTLE_PACE, "outcome {id} written within the pace");
        }
        drop(tx);
        task.await.unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn a_failing_write_is_retried_with_growing_pauses() {
        let store = Arc::new(FakeStore::default());
        store.with(|s| s.failing_settles = 2);
        let (tx, task) = settler(&store, &Arc::default());
        let started = Instant::now();
        tx.send(outcome(7)).await.unwrap();
        drop(tx);
        task.await.unwrap();
        assert_eq!(store.with(|s| s.settle_calls), 3);
        assert_eq!(batch_sizes(&store), [1], "written once, after the failures");
        assert!(started.elapsed() >= Duration::from_millis(300), "100 ms, then 200 ms");
    }

    #[tokio::test(start_paused = true)]
    async fn outcomes_are_kept_through_a_store_outage_of_any_length() {
        let store = Arc::new(FakeStore::default());
        // Ten minutes of failures at the longest pause: far beyond the old ten tries.
        store.with(|s| s.failing_settles = 120);
        let (tx, task) = settler(&store, &Arc::default());
        tx.send(outcome(1)).await.unwrap();
        tokio::time::sleep(Duration::from_secs(5)).await;
        tx.send(outcome(2)).await.unwrap();
        tokio::time::sleep(Duration::from_secs(600)).await;
        assert_eq!(
            store.with(|s| s.settle_calls),
            122,
            "the first batch tried until the store came back, then the second"
        );
        drop(tx);
        task.await.unwrap();
        let ids: Vec<i64> = store.with(|s| s.settled.iter().flatten().map(|s| s.delivery_id).collect());
        assert_eq!(ids, [1, 2], "nothing dropped: both written once the store was back");
    }

    #[tokio::test(start_paused = true)]
    async fn a_stopping_host_gives_up_a_write_that_keeps_failing() {
        let store = Arc::new(FakeStore::default());
        store.with(|s| s.failing_settles = u32::MAX);
        let dyn_store: Arc<dyn Store> = Arc::clone(&store) as Arc<dyn Store>;
        let outbox = Outbox::new(
            Arc::clone(&dyn_store),
            Routing::Fixed(Arc::new(Routes::default())),
            Arc::default(),
        );
        let stop = CancellationToken::new();
        let (tx, task) = spawn(dyn_store, "me".into(), outbox, stop.clone());
        tx.send(outcome(1)).await.unwrap();
        tokio::time::sleep(Duration::from_secs(60)).await;
        assert!(!task.is_finished(), "still trying while the host runs");
        stop.cancel();
        drop(tx);
        tokio::time::timeout(Duration::from_secs(60), task)
            .await
            .expect("a stopping host does not wait for the store forever")
            .unwrap();
        assert!(store.with(|s| s.settled.is_empty()));
    }

    #[tokio::test(start_paused = true)]
    async fn operational_events_wake_the_lanes_only_when_their_settle_held_the_lease() {
        let store = Arc::new(FakeStore::default());
        let wake: Arc<Notify> = Arc::default();
        let (tx, task) = settler(&store, &wake);
        let dead = |id| {
            let mut s = outcome(id);
            s.settlement.status = DeliveryStatus::Dead;
            s.settlement.emit = vec![operational_event(
                &Routes::default(),
                "outboxd.delivery.dead",
                serde_json::json!({}),
                format!("k{id}"),
            )];
            s
        };
        store.with(|s| s.lost.push(1));
        let woken = wake.notified();
        tokio::pin!(woken);
        woken.as_mut().enable();
        tx.send(dead(1)).await.unwrap();
        tokio::time::sleep(Duration::from_millis(10)).await;
        assert!(
            futures_poll_once(woken.as_mut()).await.is_none(),
            "a lost lease stores no event: nothing to wake for"
        );
        tx.send(dead(2)).await.unwrap();
        tokio::time::sleep(Duration::from_millis(10)).await;
        assert!(
            futures_poll_once(woken.as_mut()).await.is_some(),
            "the stored event wakes the lanes"
        );
        drop(tx);
        task.await.unwrap();
    }

    /// Polls `f` once: `Some` if it is ready.
    async fn futures_poll_once<F: std::future::Future + Unpin>(f: F) -> Option<F::Output> {
        tokio::select! {
            biased;
            out = f => Some(out),
            _ = std::future::ready(()) => None,
        }
    }
}
