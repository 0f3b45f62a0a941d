//! The dispatcher: one lane per live target, each claiming due deliveries under a lease up
//! to the target's concurrency (and, except for slow targets, a slot of the shared priority
//! pool), running them through the target's plugin, and handing the outcomes to one settler
//! that writes them in batches. A lane honours its target's circuit breaker, rate limit,
//! per-key ordering and, for batched targets, batch size and linger. Lanes are independent,
//! so a slow or failing target never holds up another. A heartbeat keeps this process's
//! leases alive and a sweeper returns leases whose worker is gone. Shutdown stops claiming,
//! lets running attempts finish within a grace period, then releases every lease still held.

pub mod breaker;
mod held;
mod limiter;
pub mod policy;
pub mod pool;
pub mod ratelimit;

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore, mpsc};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use self::breaker::{Admit, Breakers, Signal, Transition};
use self::limiter::Limiter;
use self::pool::{PoolPermit, PriorityPool};
use crate::domain::{
    DeliveryStatus, EventId, EventType, Millis, Outcome, ProducerKey, TargetClass, TargetName, delivery_key, now_ms,
};
use crate::plugin::{BatchReport, EventInput, Report};
use crate::store::{ClaimRequest, Claimed, NewEvent, Settlement, Store};
use crate::targets::routing::OPERATIONAL_PREFIX;
use crate::targets::{Registry, Target};

/// Most outcomes written in one settle transaction.
const SETTLE_BATCH: usize = 256;
/// Outcomes waiting to be written; a full queue makes attempts wait (backpressure).
const SETTLE_QUEUE: usize = 4096;
/// Least time between the starts of two settle transactions. Each one ends with an fsync
/// that holds the single writer (and so every claim) for about a millisecond; pacing them
/// lets outcomes gather into fewer, larger transactions under load. Outcomes wait at most
/// this long; leases keep their deliveries safe meanwhile.
const SETTLE_PACE: Duration = Duration::from_millis(4);
/// How far a plain lane reads ahead, in multiples of its concurrency. A lane whose read-ahead
/// runs dry waits for its next claim, which may queue behind a settle's fsync on the one
/// writer: with twice its concurrency in hand, a busy lane claims half as often, in batches
/// twice as large, and stalls half as often (the benchmark's drain: about 30 % more
/// deliveries/s than with one concurrency's worth).
const READ_AHEAD: usize = 2;
/// Shortest pause of an idle lane, so that a lane never spins.
const MIN_IDLE: Duration = Duration::from_millis(5);

/// How the dispatcher behaves.
#[derive(Debug, Clone)]
pub struct DispatchConfig {
    /// This process's lease-owner id; unique per run.
    pub owner: String,
    /// How often an idle lane looks for work that no wake-up announced.
    pub poll_interval: Duration,
    /// How much longer than the target's timeout a lease lasts; the heartbeat keeps at least
    /// this much ahead of now.
    pub lease_margin: Duration,
    /// How long running attempts may take to finish at shutdown.
    pub shutdown_grace: Duration,
    /// Size of the shared pool of attempt slots.
    pub max_in_flight: usize,
}

struct Shared {
    store: Arc<dyn Store>,
    registry: Arc<Registry>,
    breakers: Arc<Breakers>,
    pool: Arc<PriorityPool>,
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
    breakers: Arc<Breakers>,
    config: DispatchConfig,
    wake: Arc<Notify>,
    stop: CancellationToken,
) {
    let (settle_tx, settle_rx) = mpsc::channel(SETTLE_QUEUE);
    let settler = tokio::spawn(settle_loop(Arc::clone(&store), config.owner.clone(), settle_rx));
    let shared = Arc::new(Shared {
        store,
        registry,
        breakers,
        pool: PriorityPool::new(config.max_in_flight),
        config,
        wake,
        settle_tx,
        attempts: TaskTracker::new(),
        abort: CancellationToken::new(),
    });
    let keeper = tokio::spawn(keep_leases(Arc::clone(&shared), stop.clone()));

    supervise(&shared, &stop).await;

    // Claiming has stopped (every lane has returned); let running attempts finish.
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
    let _ = keeper.await;
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

/// The heartbeat and the sweeper: keeps this process's leases at least `lease_margin` ahead
/// of now while it lives, and returns expired leases of vanished workers to pending.
async fn keep_leases(shared: Arc<Shared>, stop: CancellationToken) {
    let margin = shared.config.lease_margin;
    let period = (margin / 3).max(Duration::from_millis(100));
    loop {
        tokio::select! {
            _ = tokio::time::sleep(period) => {}
            _ = stop.cancelled() => return,
        }
        let now = now_ms();
        if let Err(e) = shared
            .store
            .extend_leases(&shared.config.owner, now + margin.as_millis() as Millis)
            .await
        {
            tracing::error!(error = %e, "lease heartbeat failed");
        }
        match shared.store.sweep_expired(now).await {
            Ok(0) => {}
            Ok(n) => {
                tracing::warn!(returned = n, "swept deliveries whose lease expired back to pending");
                shared.wake.notify_waiters();
            }
            Err(e) => tracing::error!(error = %e, "lease sweep failed"),
        }
    }
}

/// Keeps one lane per live target, following registry changes, until `stop`.
async fn supervise(shared: &Arc<Shared>, stop: &CancellationToken) {
    let mut changes = shared.registry.subscribe();
    let mut lanes: HashMap<TargetName, (Arc<Target>, CancellationToken, JoinHandle<()>)> = HashMap::new();
    // Targets whose plugin does not load: (reason, lane).
    let mut held_lanes: HashMap<TargetName, (String, CancellationToken)> = HashMap::new();
    loop {
        let snapshot = changes.borrow_and_update().clone();
        held_lanes.retain(|name, (reason, token)| {
            let keep = snapshot.held.get(name).is_some_and(|h| &h.reason == reason);
            if !keep {
                token.cancel();
            }
            keep
        });
        for (name, h) in &snapshot.held {
            if !held_lanes.contains_key(name) {
                let token = stop.child_token();
                tokio::spawn(held::hold_lane(
                    Arc::clone(&shared.store),
                    Arc::clone(&shared.wake),
                    name.clone(),
                    h.reason.clone(),
                    shared.config.poll_interval,
                    token.clone(),
                ));
                held_lanes.insert(name.clone(), (h.reason.clone(), token));
            }
        }
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
        // Attempts of a removed target that are still running settle after this sync; they
        // mark themselves paused, and one more sync once they must have ended closes the race.
        let removed_timeout = lanes
            .iter()
            .filter(|(name, _)| !snapshot.targets.contains_key(*name))
            .map(|(_, (target, _, _))| target.spec.timeout)
            .max();
        if let Some(timeout) = removed_timeout {
            let shared = Arc::clone(shared);
            tokio::spawn(async move {
                tokio::time::sleep(timeout + Duration::from_secs(2)).await;
                let live = shared.registry.snapshot().targets.keys().cloned().collect();
                if let Err(e) = shared.store.sync_paused(live).await {
                    tracing::error!(error = %e, "could not pause deliveries of removed targets");
                }
            });
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

/// What a lane holds for one attempt (one delivery, or one batch): released on drop.
struct Slot {
    _target: OwnedSemaphorePermit,
    _pool: Option<PoolPermit>,
}

/// Claims and runs `target`'s due deliveries until `token` is cancelled.
///
/// A plain lane reads ahead: it claims up to [`READ_AHEAD`] times its concurrency beyond the
/// permits that are free, and the claimed deliveries wait in `ready` for a permit. Without
/// that, a busy lane claimed for each permit as it freed (one or two deliveries per claim
/// transaction); with it, claims carry about twice a lane's concurrency each. What was read
/// ahead is given back ([`give_back`]) when the breaker stops the lane and when the lane
/// ends, unstarted and uncounted. Batched lanes (a batch is claimed whole), rate-limited ones
/// (a token per claimed delivery) and slow ones (whose attempts take long, so claims are rare
/// anyway, and a hung receiver would hold the read-ahead hostage) do not read ahead.
async fn lane(shared: Arc<Shared>, target: Arc<Target>, token: CancellationToken) {
    let spec = &target.spec;
    let name = spec.name.clone();
    let permits = Arc::new(Semaphore::new(spec.concurrency as usize));
    let lease = spec.timeout + shared.config.lease_margin;
    let batched = spec.class == TargetClass::Batched;
    let mut bucket = spec.rate_per_sec.map(|r| Limiter::new(&shared.store, r));
    let ahead = if batched || bucket.is_some() || spec.class == TargetClass::Slow {
        0
    } else {
        spec.concurrency as usize * READ_AHEAD
    };
    let mut ready: VecDeque<Claimed> = VecDeque::new();
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
        let admit = shared
            .breakers
            .with(name.as_str(), spec.breaker, |b| b.admit(Instant::now()));
        let probe = match admit {
            Admit::Any => false,
            Admit::Probe => true,
            Admit::WaitUntil(until) => {
                drop(first);
                give_back(&shared, &name, &mut ready).await;
                tokio::select! {
                    _ = tokio::time::sleep_until(until) => {}
                    _ = token.cancelled() => {}
                }
                continue;
            }
            Admit::Hold => {
                drop(first);
                give_back(&shared, &name, &mut ready).await;
                idle(&token, woken, shared.config.poll_interval).await;
                continue;
            }
        };
        let mut held = vec![first];
        if !probe && !batched {
            while let Ok(p) = Arc::clone(&permits).try_acquire_owned() {
                held.push(p);
            }
        }
        // Deliveries wanted: one per permit, or a whole batch on one permit.
        let mut want = if probe {
            1
        } else if batched {
            spec.max_batch as usize
        } else {
            held.len()
        };
        if let Some(bucket) = bucket.as_mut() {
            let taken = bucket.take(shared.store.as_ref(), &name, want).await;
            let granted = taken.unwrap_or(0);
            if let Err(wait) = taken {
                drop(held);
                tokio::select! {
                    _ = tokio::time::sleep(wait.max(MIN_IDLE)) => {}
                    _ = token.cancelled() => {}
                }
                continue;
            }
            want = granted;
            if !batched {
                held.truncate(want);
            }
        }
        // Slots of the shared pool: critical lanes are served first when it is saturated.
        let mut slots = Vec::with_capacity(held.len());
        for permit in held {
            let pool = if spec.class == TargetClass::Slow {
                None
            } else if slots.is_empty() {
                tokio::select! {
                    p = shared.pool.acquire(spec.class.priority()) => Some(p),
                    _ = token.cancelled() => break,
                }
            } else {
                match shared.pool.try_acquire() {
                    Some(p) => Some(p),
                    None => break,
                }
            };
            slots.push(Slot {
                _target: permit,
                _pool: pool,
            });
        }
        if slots.is_empty() {
            break; // cancelled while waiting for the pool
        }
        if !batched {
            want = want.min(slots.len());
        }

        // Claim what the read-ahead cannot cover, and read ahead again.
        let mut claimed = Vec::new();
        if ready.len() < want {
            let ask = want - ready.len() + if probe { 0 } else { ahead };
            match claim(&shared, &name, ask, lease, spec.ordered).await {
                Ok(c) => claimed = c,
                Err(()) if ready.is_empty() => {
                    drop(slots);
                    idle(&token, woken, shared.config.poll_interval).await;
                    continue;
                }
                Err(()) => {}
            }
        }
        if batched && !claimed.is_empty() && claimed.len() < want && !probe {
            linger(&shared, &target, &mut claimed, want, lease, &token).await;
        }
        let started = if batched {
            let n = claimed.len();
            if n > 0 {
                let slot = slots.swap_remove(0);
                spawn_attempt(&shared, &target, claimed, slot);
            }
            n
        } else {
            ready.extend(claimed);
            let n = ready.len().min(slots.len());
            for (delivery, slot) in ready.drain(..n).zip(slots.drain(..)) {
                spawn_attempt(&shared, &target, vec![delivery], slot);
            }
            n
        };
        if probe {
            shared
                .breakers
                .with(name.as_str(), spec.breaker, |b| b.probe_started(started > 0));
        }
        if let Some(bucket) = bucket.as_mut() {
            bucket
                .give_back(shared.store.as_ref(), &name, want.saturating_sub(started))
                .await;
        }
        drop(slots);
        if started > 0 && !probe {
            continue; // there may be more due work: claim again as permits free up
        }
        let wait = match shared.store.next_due(&name).await {
            Ok(Some(due)) => Duration::from_millis(due.saturating_sub(now_ms()).max(0) as u64),
            _ => shared.config.poll_interval,
        };
        idle(&token, woken, wait.clamp(MIN_IDLE, shared.config.poll_interval)).await;
    }
    give_back(&shared, &name, &mut ready).await;
    tracing::debug!(target = %name, "lane stopped");
}

/// Returns a lane's read-ahead to pending, unstarted and uncounted. If the store fails, the
/// deliveries stay claimed by this host until it stops (which releases every lease it holds);
/// the lane keeps them to start later if it is still running.
async fn give_back(shared: &Shared, name: &TargetName, ready: &mut VecDeque<Claimed>) {
    if ready.is_empty() {
        return;
    }
    let claims: Vec<(i64, u32)> = ready.iter().map(|c| (c.delivery_id, c.seq)).collect();
    match shared.store.unclaim(&shared.config.owner, claims).await {
        Ok(n) => {
            tracing::debug!(target = %name, given_back = n, "read-ahead given back");
            ready.clear();
            shared.wake.notify_waiters();
        }
        Err(e) => tracing::error!(
            target = %name, error = %e, count = ready.len(),
            "could not give back deliveries claimed ahead; they stay claimed by this host until it stops"
        ),
    }
}

async fn claim(
    shared: &Shared,
    name: &TargetName,
    want: usize,
    lease: Duration,
    ordered: bool,
) -> Result<Vec<Claimed>, ()> {
    let now = now_ms();
    shared
        .store
        .claim(ClaimRequest {
            target: name.clone(),
            limit: want,
            owner: shared.config.owner.clone(),
            now,
            lease_until: now + lease.as_millis() as Millis,
            ordered,
        })
        .await
        .map_err(|e| tracing::error!(target = %name, error = %e, "claim failed; retrying"))
}

/// Batched targets: with fewer than a full batch claimed, keeps claiming until the batch is
/// full or the linger time since the first claim is over.
async fn linger(
    shared: &Shared,
    target: &Target,
    claimed: &mut Vec<Claimed>,
    want: usize,
    lease: Duration,
    token: &CancellationToken,
) {
    let deadline = Instant::now() + target.spec.linger;
    while claimed.len() < want {
        let woken = shared.wake.notified();
        tokio::pin!(woken);
        woken.as_mut().enable();
        let now = Instant::now();
        if now >= deadline {
            break;
        }
        let wait = (deadline - now).min(shared.config.poll_interval);
        tokio::select! {
            _ = woken => {}
            _ = tokio::time::sleep(wait) => {}
            _ = token.cancelled() => break,
        }
        if let Ok(more) = claim(
            shared,
            &target.spec.name,
            want - claimed.len(),
            lease,
            target.spec.ordered,
        )
        .await
        {
            claimed.extend(more);
        }
    }
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

fn spawn_attempt(shared: &Arc<Shared>, lane_target: &Arc<Target>, deliveries: Vec<Claimed>, slot: Slot) {
    let shared_for_task = Arc::clone(shared);
    let fallback = Arc::clone(lane_target);
    shared.attempts.spawn(async move {
        attempt(&shared_for_task, deliveries, fallback).await;
        drop(slot);
    });
}

fn input_for(delivery: &Claimed) -> EventInput {
    let event = &delivery.event;
    EventInput {
        id: event.id.to_string(),
        event_type: event.event_type.clone(),
        payload: event.payload.clone(),
        idempotency_key: delivery_key(&event.id, &delivery.target),
        attempt: delivery.attempt,
        created_at_ms: event.created_at.max(0) as u64,
        headers: event.headers.clone(),
    }
}

/// Runs claimed deliveries (one, or a batch) and queues their settlements.
async fn attempt(shared: &Shared, deliveries: Vec<Claimed>, lane_target: Arc<Target>) {
    let Some(first) = deliveries.first() else { return };
    let name = first.target.clone();
    // The newest version of the target runs the attempt; the lane's is the fallback when the
    // target has just been removed.
    let current = shared.registry.snapshot().targets.get(&name).cloned();
    let target = current.unwrap_or(lane_target);
    let inputs: Vec<EventInput> = deliveries.iter().map(input_for).collect();
    let batched = target.spec.class == TargetClass::Batched;
    let report = tokio::select! {
        r = async {
            let r: CallReport = if batched {
                target.binding.deliver_batch(inputs).await.into()
            } else {
                let mut inputs = inputs;
                target.binding.deliver(inputs.remove(0)).await.into()
            };
            r
        } => r,
        _ = shared.abort.cancelled() => return, // released at shutdown
    };

    // The breaker learns from the call as a whole (see `breaker::Signal::of_call`).
    let transition = Signal::of_call(&report.outcomes, target.spec.retry.max_backoff).and_then(|signal| {
        shared
            .breakers
            .with(name.as_str(), target.spec.breaker, |b| b.record(signal, Instant::now()))
    });
    let mut recovered = None;
    match transition {
        Some(Transition::Opened { failures, attempts }) => tracing::warn!(
            target = %name, failures, attempts,
            cooldown_ms = target.spec.breaker.cooldown.as_millis() as u64,
            "circuit breaker opened: no attempts until the cool-down is over"
        ),
        Some(Transition::Paused { pause, .. }) => tracing::info!(
            target = %name, pause_ms = pause.as_millis() as u64,
            "the receiver asked for a pause (Retry-After): no attempts to this target until it is over"
        ),
        Some(Transition::Recovered { failures }) => {
            tracing::info!(target = %name, failures, "circuit breaker closed: target recovered");
            recovered = Some(operational_event(
                shared,
                "outboxd.target.recovered",
                serde_json::json!({ "target": name.as_str(), "failures": failures }),
                format!("outboxd.target.recovered:{name}:{}", now_ms()),
            ));
        }
        None => {}
    }

    let now = now_ms();
    let duration_ms = report.duration.as_millis() as u64;
    // A target removed while this attempt ran gets no further attempts until it is back.
    let still_removed = !shared.registry.snapshot().targets.contains_key(&name);
    for (i, (delivery, outcome)) in deliveries.iter().zip(report.outcomes).enumerate() {
        let mut decision = policy::decide(&target.spec.retry, delivery.attempt, &outcome, now, &mut rand::rng());
        if still_removed && decision.status == DeliveryStatus::Pending {
            decision.status = DeliveryStatus::Paused;
        }
        log_outcome(delivery, &outcome, decision.status, report.duration);
        crate::api::metrics::attempt_finished(name.as_str(), outcome.attempt_outcome(), report.duration);
        let mut emit = Vec::new();
        if i == 0
            && let Some(ev) = recovered.take()
        {
            emit.push(ev);
        }
        // Dead (not discarded: best-effort gives up quietly) needs an operator's attention.
        if decision.status == DeliveryStatus::Dead && !delivery.event.event_type.starts_with(OPERATIONAL_PREFIX) {
            emit.push(operational_event(
                shared,
                "outboxd.delivery.dead",
                serde_json::json!({
                    "event_id": delivery.event.id.to_string(),
                    "event_type": delivery.event.event_type,
                    "target": name.as_str(),
                    "attempts": delivery.attempt,
                    "last_error": decision.last_error,
                    "idempotency_key": delivery_key(&delivery.event.id, &name),
                }),
                format!("outboxd.delivery.dead:{}:{}", delivery.delivery_id, delivery.seq),
            ));
        }
        let settlement = Settlement {
            target: name.clone(),
            delivery_id: delivery.delivery_id,
            seq: delivery.seq,
            status: decision.status,
            next_attempt_at: decision.next_attempt_at,
            last_error: decision.last_error,
            outcome: outcome.attempt_outcome(),
            finished_at: now,
            duration_ms,
            plugin_hash: Some(target.binding.plugin().hash().to_owned()),
            emit,
        };
        if shared.settle_tx.send(settlement).await.is_err() {
            tracing::error!(
                delivery = delivery.delivery_id,
                "settler gone; the lease will expire and the delivery be retried"
            );
        }
    }
}

/// An event of outboxd's own, routed to the targets that subscribe to it.
fn operational_event(shared: &Shared, event_type: &str, payload: serde_json::Value, key: String) -> NewEvent {
    let targets = shared.registry.snapshot().routes.targets_for(event_type);
    NewEvent {
        id: EventId::new(),
        event_type: EventType::try_from(event_type.to_owned()).expect("operational event types are valid"),
        payload: payload.to_string(),
        headers: Vec::new(),
        idempotency_key: ProducerKey::try_from(key).ok(),
        ordering_key: None,
        targets,
    }
}

fn log_outcome(d: &Claimed, outcome: &Outcome, status: DeliveryStatus, took: Duration) {
    let took_ms = took.as_millis() as u64;
    match (outcome, status) {
        // Success is the common case: at debug, so that a busy host's log holds what needs
        // attention (the metrics count deliveries).
        (Outcome::Delivered, _) => {
            tracing::debug!(target = %d.target, event = %d.event.id, attempt = d.attempt, took_ms, "delivered")
        }
        (_, DeliveryStatus::Dead | DeliveryStatus::Discarded) => tracing::warn!(
            target = %d.target, event = %d.event.id, attempt = d.attempt, took_ms, status = status.as_str(),
            error = outcome.error().unwrap_or_default(), "delivery gave up"
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
    let mut last = Instant::now();
    while rx.recv_many(&mut batch, SETTLE_BATCH).await > 0 {
        // Under load, give the next outcomes a moment to join this transaction.
        if batch.len() < SETTLE_BATCH && last.elapsed() < SETTLE_PACE {
            tokio::time::sleep_until(last + SETTLE_PACE).await;
            while batch.len() < SETTLE_BATCH {
                match rx.try_recv() {
                    Ok(s) => batch.push(s),
                    Err(_) => break,
                }
            }
        }
        last = Instant::now();
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

/// What one call to a plugin produced, one outcome per event.
#[derive(Debug)]
pub struct CallReport {
    pub outcomes: Vec<Outcome>,
    pub duration: Duration,
}

impl From<Report> for CallReport {
    fn from(r: Report) -> Self {
        Self {
            outcomes: vec![r.outcome],
            duration: r.duration,
        }
    }
}

impl From<BatchReport> for CallReport {
    fn from(r: BatchReport) -> Self {
        Self {
            outcomes: r.outcomes,
            duration: r.duration,
        }
    }
}
