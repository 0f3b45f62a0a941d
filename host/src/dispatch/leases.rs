//! Leases: the heartbeat that keeps this process's leases at least `lease_margin` ahead of
//! now while it lives (so outcomes waiting in the settle queue never lose theirs), the
//! sweeper that returns in-flight deliveries whose lease expired (their worker is gone) to
//! pending, the give-back of deliveries a lane claimed but never started, and the release of
//! every lease this process still holds at shutdown.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::domain::{Millis, TargetName, now_ms};
use crate::store::{Claimed, Store};

/// Least time between two heartbeats.
const MIN_PERIOD: Duration = Duration::from_millis(100);

/// The heartbeat and the sweeper, every `margin / 3` (at least [`MIN_PERIOD`]) until `stop`.
/// A sweep that returned anything wakes idle lanes.
pub(super) async fn keep(
    store: Arc<dyn Store>,
    owner: String,
    margin: Duration,
    wake: Arc<Notify>,
    stop: CancellationToken,
) {
    let period = (margin / 3).max(MIN_PERIOD);
    loop {
        tokio::select! {
            _ = tokio::time::sleep(period) => {}
            _ = stop.cancelled() => return,
        }
        let now = now_ms();
        if let Err(e) = store.extend_leases(&owner, now, margin.as_millis() as Millis).await {
            tracing::error!(error = %e, "lease heartbeat failed");
        }
        match store.sweep_expired(now).await {
            Ok(0) => {}
            Ok(n) => {
                tracing::warn!(returned = n, "swept deliveries whose lease expired back to pending");
                wake.notify_waiters();
            }
            Err(e) => tracing::error!(error = %e, "lease sweep failed"),
        }
    }
}

/// Returns a lane's unstarted claims to pending, uncounted, and wakes idle lanes. If the
/// store fails, the deliveries stay claimed by this host until it stops (which releases every
/// lease it holds); `ready` keeps them, so a lane that is still running can start them later.
pub(super) async fn give_back(
    store: &dyn Store,
    owner: &str,
    target: &TargetName,
    ready: &mut VecDeque<Claimed>,
    wake: &Notify,
) {
    if ready.is_empty() {
        return;
    }
    let claims: Vec<(i64, u32)> = ready.iter().map(|c| (c.delivery_id, c.seq)).collect();
    match store.unclaim(owner, claims, None).await {
        Ok(n) => {
            tracing::debug!(target = %target, given_back = n, "read-ahead given back");
            ready.clear();
            wake.notify_waiters();
        }
        Err(e) => tracing::error!(
            target = %target, error = %e, count = ready.len(),
            "could not give back deliveries claimed ahead; they stay claimed by this host until it stops"
        ),
    }
}

/// Returns retries that the retry budget held back to pending, uncounted, not due before
/// `until`. Returns those the store could not take back (still claimed, to be asked about
/// again).
pub(super) async fn defer(
    store: &dyn Store,
    owner: &str,
    target: &TargetName,
    held: VecDeque<Claimed>,
    until: Millis,
) -> VecDeque<Claimed> {
    let claims: Vec<(i64, u32)> = held.iter().map(|c| (c.delivery_id, c.seq)).collect();
    match store.unclaim(owner, claims, Some(until)).await {
        Ok(n) => {
            tracing::debug!(target = %target, held = n, "retries held back by the retry budget");
            VecDeque::new()
        }
        Err(e) => {
            tracing::error!(target = %target, error = %e, "could not hold retries back; trying again");
            held
        }
    }
}

/// At shutdown: every delivery `owner` still holds goes back to pending, due now.
pub(super) async fn release(store: &dyn Store, owner: &str) {
    match store.release(owner, now_ms()).await {
        Ok(0) => {}
        Ok(n) => tracing::info!(released = n, "released leases of unfinished attempts"),
        Err(e) => tracing::error!(error = %e, "could not release leases; they will expire"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dispatch::testing::{FakeStore, claimed};

    fn start(
        store: &Arc<FakeStore>,
        margin: Duration,
        wake: &Arc<Notify>,
    ) -> (CancellationToken, tokio::task::JoinHandle<()>) {
        let stop = CancellationToken::new();
        let task = tokio::spawn(keep(
            Arc::clone(store) as Arc<dyn Store>,
            "me".into(),
            margin,
            Arc::clone(wake),
            stop.clone(),
        ));
        (stop, task)
    }

    #[tokio::test(start_paused = true)]
    async fn the_heartbeat_keeps_leases_a_margin_ahead_every_third_of_it() {
        let store = Arc::new(FakeStore::default());
        let margin = Duration::from_secs(3);
        let (stop, task) = start(&store, margin, &Arc::default());
        tokio::time::sleep(Duration::from_millis(3_500)).await;
        let wall = now_ms();
        let extended = store.with(|s| s.extended.clone());
        assert_eq!(extended.len(), 3, "once a second: {extended:?}");
        assert!(
            extended.iter().all(|&until| until >= wall + 2_900),
            "{extended:?} vs {wall}"
        );
        assert_eq!(
            store.with(|s| s.sweep_calls),
            3,
            "the sweeper runs with every heartbeat"
        );
        stop.cancel();
        task.await.unwrap();
        tokio::time::sleep(Duration::from_secs(5)).await;
        assert_eq!(store.with(|s| s.extended.len()), 3, "nothing after stop");
    }

    #[tokio::test(start_paused = true)]
    async fn a_short_margin_still_beats_no_faster_than_the_minimum_period() {
        let store = Arc::new(FakeStore::default());
        let (stop, task) = start(&store, Duration::from_millis(30), &Arc::default());
        tokio::time::sleep(Duration::from_millis(350)).await;
        assert_eq!(
            store.with(|s| s.extended.len()),
            3,
            "every {MIN_PERIOD:?}, not every 10 ms"
        );
        stop.cancel();
        task.await.unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn a_sweep_that_returned_deliveries_wakes_the_lanes() {
        let store = Arc::new(FakeStore::default());
        store.with(|s| s.sweeps = [0, 2].into());
        let wake: Arc<Notify> = Arc::default();
        let (stop, task) = start(&store, Duration::from_secs(3), &wake);
        let woken = wake.notified();
        tokio::pin!(woken);
        woken.as_mut().enable();
        let at = tokio::time::Instant::now();
        woken.await;
        assert_eq!(
            at.elapsed(),
            Duration::from_secs(2),
            "the second sweep returned two deliveries"
        );
        stop.cancel();
        task.await.unwrap();
    }

    #[tokio::test]
    async fn given_back_claims_are_pending_again_and_kept_when_the_store_fails() {
        let store = FakeStore::default();
        let wake = Notify::new();
        let target: TargetName = "crm".parse().unwrap();
        let mut ready: VecDeque<Claimed> = (1..=3).map(|id| claimed(id, "crm", "order.created", 1)).collect();
        store.with(|s| s.unclaim_fails = true);
        give_back(&store, "me", &target, &mut ready, &wake).await;
        assert_eq!(ready.len(), 3, "kept, to start later");
        store.with(|s| s.unclaim_fails = false);
        give_back(&store, "me", &target, &mut ready, &wake).await;
        assert!(ready.is_empty());
        assert_eq!(store.with(|s| s.unclaimed.clone()), [(1, 1), (2, 1), (3, 1)]);
    }
}
