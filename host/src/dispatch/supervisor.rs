//! The supervisor: keeps one lane per live target and one holding lane per target whose
//! plugin does not load, following the registry's snapshots until the dispatcher stops. A
//! reloaded target gets a new lane (the old one stops claiming; its running attempts finish);
//! the deliveries of a removed target wait `paused` until a target of that name is back.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::lane::{Lane, LaneContext, Start};
use super::{Shared, attempt, held};
use crate::domain::TargetName;
use crate::targets::{Snapshot, Target};

/// A running lane: the target version it serves, its stop token and its task.
type Running = (Arc<Target>, CancellationToken, JoinHandle<()>);

/// Keeps the lanes in step with the registry until `stop`, then stops them all.
pub(super) async fn supervise(shared: &Arc<Shared>, stop: &CancellationToken) {
    let mut changes = shared.services.registry.subscribe();
    let mut lanes: HashMap<TargetName, Running> = HashMap::new();
    // Targets whose plugin does not load: (reason, holding lane).
    let mut held_lanes: HashMap<TargetName, (String, CancellationToken)> = HashMap::new();
    loop {
        let snapshot = changes.borrow_and_update().clone();
        follow_held(shared, &snapshot, &mut held_lanes, stop);
        sync_paused(shared, &snapshot, &lanes).await;
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
                let task = spawn_lane(Arc::clone(shared), Arc::clone(target), token.clone());
                lanes.insert(name.clone(), (Arc::clone(target), token, task));
            }
        }
        tokio::select! {
            changed = changes.changed() => if changed.is_err() { break },
            _ = stop.cancelled() => break,
        }
    }
    for (_, (_, token, task)) in lanes {
        token.cancel();
        let _ = task.await;
    }
}

/// Starts the lane of `target` until `token` is cancelled; its attempts run on the
/// dispatcher's task tracker.
fn spawn_lane(shared: Arc<Shared>, target: Arc<Target>, token: CancellationToken) -> JoinHandle<()> {
    let context = LaneContext {
        store: Arc::clone(&shared.services.store),
        owner: shared.config.owner.clone(),
        breakers: Arc::clone(&shared.services.breakers),
        pool: Arc::clone(&shared.pool),
        wake: Arc::clone(&shared.services.wake),
        pauses: shared.services.outbox.pauses(),
        poll_interval: shared.config.poll_interval,
        lease_margin: shared.config.lease_margin,
    };
    let spec = target.spec.clone();
    let flow = shared.services.flows.get(&spec);
    let start: Start = Box::new(move |deliveries, slot| attempt::spawn(&shared, &target, deliveries, slot));
    tokio::spawn(Lane::new(context, spec, flow, start).run(token))
}

/// Starts a holding lane for every held target, and stops those whose target loads now (or
/// fails for another reason).
fn follow_held(
    shared: &Shared,
    snapshot: &Snapshot,
    held_lanes: &mut HashMap<TargetName, (String, CancellationToken)>,
    stop: &CancellationToken,
) {
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
                Arc::clone(&shared.services.store),
                Arc::clone(&shared.services.wake),
                name.clone(),
                h.reason.clone(),
                shared.config.poll_interval,
                token.clone(),
            ));
            held_lanes.insert(name.clone(), (h.reason.clone(), token));
        }
    }
}

/// Pauses the deliveries of removed targets and resumes those of targets that are back.
/// Attempts of a removed target that are still running settle after this; they mark
/// themselves paused, and one more pass once they must have ended closes the race.
async fn sync_paused(shared: &Arc<Shared>, snapshot: &Snapshot, lanes: &HashMap<TargetName, Running>) {
    let store = &shared.services.store;
    match store.sync_paused(snapshot.targets.keys().cloned().collect()).await {
        Ok((0, 0)) => {}
        Ok((paused, resumed)) => tracing::info!(
            paused,
            resumed,
            "paused deliveries of removed targets, resumed those of present ones"
        ),
        Err(e) => tracing::error!(error = %e, "could not pause or resume deliveries"),
    }
    let removed_timeout = lanes
        .iter()
        .filter(|(name, _)| !snapshot.targets.contains_key(*name))
        .map(|(_, (target, _, _))| target.spec.timeout)
        .max();
    if let Some(timeout) = removed_timeout {
        let shared = Arc::clone(shared);
        tokio::spawn(async move {
            tokio::time::sleep(timeout + Duration::from_secs(2)).await;
            let live = shared.services.registry.snapshot().targets.keys().cloned().collect();
            if let Err(e) = shared.services.store.sync_paused(live).await {
                tracing::error!(error = %e, "could not pause deliveries of removed targets");
            }
        });
    }
}
