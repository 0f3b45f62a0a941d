//! The dispatcher: delivers every due delivery to its target, each target independently.
//!
//! Its parts, one concept each:
//! - [`supervisor`]: one lane per live target (and a holding lane per target whose plugin
//!   does not load), following the registry's snapshots;
//! - [`lane`]: claims a target's due deliveries under a lease, within its concurrency, its
//!   circuit breaker, its rate limit and (except for `slow` targets) a slot of the shared
//!   priority pool, and starts their attempts;
//! - [`attempt`]: runs claimed deliveries through the target's plugin and decides what each
//!   outcome means (retry schedule, breaker, adaptive limit, operational events);
//! - [`flow`]: each target's limit in force (adaptive or fixed), the gate that enforces it,
//!   and its retry budget;
//! - [`settler`]: writes the outcomes in batches, each only while this process still holds
//!   the delivery's lease;
//! - [`leases`]: the heartbeat that keeps this process's leases alive, the sweeper that
//!   returns leases whose worker is gone, the give-back of unstarted claims and the release
//!   of every lease at shutdown.
//!
//! Shutdown stops claiming, lets running attempts finish within a grace period, lets the
//! settler write what they produced, then releases every lease still held.

mod attempt;
pub mod breakers;
pub mod flow;
mod held;
mod lane;
mod leases;
mod limiter;
pub mod pool;
pub mod ratelimit;
mod settler;
mod supervisor;
#[cfg(test)]
mod testing;

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{Notify, mpsc};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use self::breakers::Breakers;
use self::flow::Flows;
use self::pool::PriorityPool;
use crate::outbox::Outbox;
use crate::store::Store;
use crate::targets::Registry;

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

/// What the dispatcher works with, shared with the rest of the service.
#[derive(Clone)]
pub struct Services {
    pub store: Arc<dyn Store>,
    pub registry: Arc<Registry>,
    pub breakers: Arc<Breakers>,
    /// Each target's limit in force and retry budget.
    pub flows: Arc<Flows>,
    /// The front door, for operational events.
    pub outbox: Outbox,
    /// Notified when due work appears (ingest, replay, a sweep); idle lanes wait on it.
    pub wake: Arc<Notify>,
}

/// What the parts share while the dispatcher runs.
struct Shared {
    services: Services,
    pool: Arc<PriorityPool>,
    config: DispatchConfig,
    settle_tx: mpsc::Sender<settler::Queued>,
    attempts: TaskTracker,
    /// Cancelled when the grace period is over: running attempts are abandoned.
    abort: CancellationToken,
}

/// Runs the dispatcher until `stop` is cancelled, then shuts it down gracefully.
pub async fn run(services: Services, config: DispatchConfig, stop: CancellationToken) {
    let (settle_tx, settler) = settler::spawn(
        Arc::clone(&services.store),
        config.owner.clone(),
        services.outbox.clone(),
        stop.clone(),
    );
    let keeper = tokio::spawn(leases::keep(
        Arc::clone(&services.store),
        config.owner.clone(),
        config.lease_margin,
        Arc::clone(&services.wake),
        stop.clone(),
    ));
    let shared = Arc::new(Shared {
        pool: PriorityPool::new(config.max_in_flight),
        services,
        config,
        settle_tx,
        attempts: TaskTracker::new(),
        abort: CancellationToken::new(),
    });

    supervisor::supervise(&shared, &stop).await;

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
    let store = Arc::clone(&shared.services.store);
    let owner = shared.config.owner.clone();
    drop(shared); // the last settle sender: the settler drains and ends
    if let Err(e) = settler.await {
        tracing::error!(error = %e, "settler task failed");
    }
    leases::release(store.as_ref(), &owner).await;
}
