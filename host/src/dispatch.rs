//! The dispatcher: one lane per live target, each claiming due deliveries under a lease up
//! to the target's concurrency, running them through the target's plugin, and handing the
//! outcomes to one settler that writes them in batches. Lanes are independent, so a slow
//! or failing target never holds up another. Shutdown stops claiming, lets running
//! attempts finish within a grace period, then releases every lease still held.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{Notify, Semaphore, mpsc};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::domain::{DeliveryStatus, Millis, Outcome, TargetName, delivery_key, now_ms};
use crate::plugin::EventInput;
use crate::policy;
use crate::store::{Claimed, Settlement, Store};
use crate::targets::{Registry, Target};

/// Most outcomes written in one settle transaction.
const SETTLE_BATCH: usize = 256;
/// Outcomes waiting to be written; a full queue makes attempts wait (backpressure).
const SETTLE_QUEUE: usize = 4096;
/// Shortest pause of an idle lane, so that a lane never spins.
const MIN_IDLE: Duration = Duration::from_millis(5);

/// How the dispatcher behaves.
#[derive(Debug, Clone)]
pub struct DispatchConfig {
    /// This process's lease-owner id; unique per run.
    pub owner: String,
    /// How often an idle lane looks for work that no wake-up announced.
    pub poll_interval: Duration,
    /// How much longer than the target's timeout a lease lasts.
    pub lease_margin: Duration,
    /// How long running attempts may take to finish at shutdown.
    pub shutdown_grace: Duration,
}

struct Shared {
    store: Arc<dyn Store>,
    registry: Arc<Registry>,
    config: DispatchConfig,
    wake: Arc<Notify>,
    settle_tx: mpsc::Sender<Settlement>,
    attempts: TaskTracker,
    /// Cancelled when the grace period is over: running attempts are abandoned.
    abort: CancellationToken,
}

/// Runs the dispatcher until `stop` is cancelled, then shuts it down gracefully.
/// `wake` is notified by ingest so that idle lanes pick up new work at once.
pub async fn run(
    store: Arc<dyn Store>,
    registry: Arc<Registry>,
    config: DispatchConfig,
    wake: Arc<Notify>,
    stop: CancellationToken,
) {
    let (settle_tx, settle_rx) = mpsc::channel(SETTLE_QUEUE);
    let settler = tokio::spawn(settle_loop(Arc::clone(&store), config.owner.clone(), settle_rx));
    let shared = Arc::new(Shared {
        store,
        registry,
        config,
        wake,
        settle_tx,
        attempts: TaskTracker::new(),
        abort: CancellationToken::new(),
    });

    supervise(&shared, &stop).await;

    // Stop claiming is done (every lane has returned); let running attempts finish.
    shared.attempts.close();
    if tokio::time::timeout(shared.config.shutdown_grace, shared.attempts.wait())
        .await
        .is_err()
    {
        tracing::warn!(
            running = shared.attempts.len(),
            "grace period over: abandoning running attempts; their deliveries go back to pending"
        );
        shared.abort.cancel();
        shared.attempts.wait().await;
    }
    let store = Arc::clone(&shared.store);
    let owner = shared.config.owner.clone();
    drop(shared); // the last settle sender: the settler drains and ends
    if let Err(e) = settler.await {
        tracing::error!(error = %e, "settler task failed");
    }
    match store.release(&owner, now_ms()).await {
        Ok(0) => {}
        Ok(n) => tracing::info!(released = n, "released leases of unfinished attempts"),
        Err(e) => tracing::error!(error = %e, "could not release leases; they will expire"),
    }
}

/// Keeps one lane per live target, following registry changes, until `stop`.
async fn supervise(shared: &Arc<Shared>, stop: &CancellationToken) {
    let mut changes = shared.registry.subscribe();
    let mut lanes: HashMap<TargetName, (Arc<Target>, CancellationToken, JoinHandle<()>)> = HashMap::new();
    loop {
        let snapshot = changes.borrow_and_update().clone();
        // Deliveries of removed targets wait as `paused`; those of targets that are back resume.
        match shared
            .store
            .sync_paused(snapshot.targets.keys().cloned().collect())
            .await
        {
            Ok((0, 0)) => {}
            Ok((paused, resumed)) => tracing::info!(
                paused,
                resumed,
                "paused deliveries of removed targets, resumed those of present ones"
            ),
            Err(e) => tracing::error!(error = %e, "could not pause or resume deliveries"),
        }
        lanes.retain(|name, (target, token, _)| {
            let keep = snapshot.targets.get(name).is_some_and(|t| Arc::ptr_eq(t, target));
            if !keep {
                token.cancel();
            }
            keep
        });
        for (name, target) in &snapshot.targets {
            if !lanes.contains_key(name) {
                let token = stop.child_token();
                let lane = tokio::spawn(lane(Arc::clone(shared), Arc::clone(target), token.clone()));
                lanes.insert(name.clone(), (Arc::clone(target), token, lane));
            }
        }
        tokio::select! {
            changed = changes.changed() => if changed.is_err() { break },
            _ = stop.cancelled() => break,
        }
    }
    for (_, (_, token, handle)) in lanes {
        token.cancel();
        let _ = handle.await;
    }
}

/// Claims and runs `target`'s due deliveries until `token` is cancelled.
async fn lane(shared: Arc<Shared>, target: Arc<Target>, token: CancellationToken) {
    let name = target.spec.name.clone();
    let permits = Arc::new(Semaphore::new(target.spec.concurrency as usize));
    let lease = target.spec.timeout + shared.config.lease_margin;
    tracing::debug!(target = %name, "lane started");
    while !token.is_cancelled() {
        // Arm the wake-up before looking for work, so an ingest in between is not missed.
        let woken = shared.wake.notified();
        tokio::pin!(woken);
        woken.as_mut().enable();

        let first = tokio::select! {
            p = Arc::clone(&permits).acquire_owned() => match p { Ok(p) => p, Err(_) => break },
            _ = token.cancelled() => break,
        };
        let mut held = vec![first];
        while let Ok(p) = Arc::clone(&permits).try_acquire_owned() {
            held.push(p);
        }
        let now = now_ms();
        let claimed = shared
            .store
            .claim(
                &name,
                held.len(),
                &shared.config.owner,
                now,
                now + lease.as_millis() as Millis,
            )
            .await;
        let claimed = match claimed {
            Ok(c) => c,
            Err(e) => {
                tracing::error!(target = %name, error = %e, "claim failed; retrying");
                drop(held);
                idle(&token, woken, shared.config.poll_interval).await;
                continue;
            }
        };
        let full = claimed.len() == held.len();
        for (delivery, permit) in claimed.into_iter().zip(held.drain(..)) {
            let shared = Arc::clone(&shared);
            let fallback = Arc::clone(&target);
            shared.attempts.clone().spawn(async move {
                attempt(&shared, delivery, fallback).await;
                drop(permit);
            });
        }
        drop(held);
        if full {
            continue; // there may be more due work: claim again as permits free up
        }
        let wait = match shared.store.next_due(&name).await {
            Ok(Some(due)) => Duration::from_millis(due.saturating_sub(now_ms()).max(0) as u64),
            _ => shared.config.poll_interval,
        };
        idle(&token, woken, wait.clamp(MIN_IDLE, shared.config.poll_interval)).await;
    }
    tracing::debug!(target = %name, "lane stopped");
}

async fn idle(
    token: &CancellationToken,
    woken: std::pin::Pin<&mut tokio::sync::futures::Notified<'_>>,
    wait: Duration,
) {
    tokio::select! {
        _ = woken => {}
        _ = tokio::time::sleep(wait) => {}
        _ = token.cancelled() => {}
    }
}

/// Runs one claimed delivery and queues its settlement.
async fn attempt(shared: &Shared, delivery: Claimed, lane_target: Arc<Target>) {
    // The newest version of the target runs the attempt; the lane's is the fallback when the
    // target has just been removed.
    let current = shared.registry.snapshot().targets.get(&delivery.target).cloned();
    let removed = current.is_none();
    let target = current.unwrap_or(lane_target);
    let event = &delivery.event;
    let input = EventInput {
        id: event.id.to_string(),
        event_type: event.event_type.clone(),
        payload: event.payload.clone(),
        idempotency_key: delivery_key(&event.id, &delivery.target),
        attempt: delivery.attempt,
        created_at_ms: event.created_at.max(0) as u64,
        headers: event.headers.clone(),
    };
    let report = tokio::select! {
        r = target.plugin.deliver(&target.grants, input) => r,
        _ = shared.abort.cancelled() => return, // released at shutdown
    };
    let now = now_ms();
    let mut decision = policy::decide(
        &target.spec.retry,
        delivery.attempt,
        &report.outcome,
        now,
        &mut rand::rng(),
    );
    // A target removed while this attempt ran gets no further attempts until it is back.
    let still_removed = removed && !shared.registry.snapshot().targets.contains_key(&delivery.target);
    if still_removed && decision.status == DeliveryStatus::Pending {
        decision.status = DeliveryStatus::Paused;
    }
    log_outcome(&delivery, &report.outcome, decision.status, report.duration);
    let settlement = Settlement {
        target: delivery.target.clone(),
        delivery_id: delivery.delivery_id,
        attempt: delivery.attempt,
        status: decision.status,
        next_attempt_at: decision.next_attempt_at,
        last_error: decision.last_error,
        outcome: report.outcome.attempt_outcome(),
        finished_at: now,
        duration_ms: report.duration.as_millis() as u64,
        plugin_hash: Some(target.plugin.hash().to_owned()),
    };
    if shared.settle_tx.send(settlement).await.is_err() {
        tracing::error!(
            delivery = delivery.delivery_id,
            "settler gone; the lease will expire and the delivery be retried"
        );
    }
}

fn log_outcome(d: &Claimed, outcome: &Outcome, status: DeliveryStatus, took: Duration) {
    let took_ms = took.as_millis() as u64;
    match (outcome, status) {
        (Outcome::Delivered, _) => {
            tracing::info!(target = %d.target, event = %d.event.id, attempt = d.attempt, took_ms, "delivered")
        }
        (_, DeliveryStatus::Dead) => tracing::warn!(
            target = %d.target, event = %d.event.id, attempt = d.attempt, took_ms,
            error = outcome.error().unwrap_or_default(), "delivery dead"
        ),
        _ => tracing::info!(
            target = %d.target, event = %d.event.id, attempt = d.attempt, took_ms,
            error = outcome.error().unwrap_or_default(), "attempt failed; will retry"
        ),
    }
}

/// Writes settlements in batches: whatever is queued when a write starts goes in one
/// transaction. A failed write is retried; the leases keep the deliveries safe meanwhile.
async fn settle_loop(store: Arc<dyn Store>, owner: String, mut rx: mpsc::Receiver<Settlement>) {
    let mut batch = Vec::with_capacity(SETTLE_BATCH);
    while rx.recv_many(&mut batch, SETTLE_BATCH).await > 0 {
        let mut failures = 0u32;
        loop {
            match store.settle(&owner, batch.clone()).await {
                Ok(report) => {
                    for id in report.lost_leases {
                        tracing::warn!(
                            delivery = id,
                            "lease lost before settling; another worker owns the delivery now"
                        );
                    }
                    break;
                }
                Err(e) if failures < 10 => {
                    failures += 1;
                    tracing::error!(error = %e, failures, "settle failed; retrying");
                    tokio::time::sleep(Duration::from_millis(100 * u64::from(failures))).await;
                }
                Err(e) => {
                    tracing::error!(error = %e, count = batch.len(), "settle keeps failing; dropping these outcomes, their leases will expire and the deliveries be retried");
                    break;
                }
            }
        }
        batch.clear();
    }
}
