//! Test doubles for the dispatcher's parts: a store that hands out scripted claims and
//! records every write, and helpers to make claimed deliveries and target specs.

use std::collections::{BTreeMap, VecDeque};
use std::path::Path;
use std::sync::Mutex;

use async_trait::async_trait;

use crate::domain::{EventId, Millis, TargetName};
use crate::store::{
    Cancellation, ClaimRequest, Claimed, Erasure, EventDetail, EventFilter, EventRef, EventSummary, FailedDelivery,
    FailedFilter, Ingested, NewEvent, NewReplayJob, ReplayChunk, ReplayJob, SettleReport, Settlement, StatusCounts,
    Store, StoreError, StoredEvent, VersionAttempts,
};
use crate::targets::manifest::TargetSpec;

/// What the fake store holds and what it saw.
#[derive(Default)]
pub(super) struct FakeState {
    /// Handed out by `claim`, in order.
    pub due: VecDeque<Claimed>,
    /// The `limit` of every claim.
    pub claims: Vec<usize>,
    /// Every `(delivery, seq)` given back.
    pub unclaimed: Vec<(i64, u32)>,
    /// Every settle batch written.
    pub settled: Vec<Vec<Settlement>>,
    /// Deliveries whose lease is lost: a settle reports them.
    pub lost: Vec<i64>,
    /// Settles that fail before one succeeds.
    pub failing_settles: u32,
    /// Settle calls, failed ones included.
    pub settle_calls: u32,
    /// Until when every heartbeat asked to extend the leases (its `now` + `lease_ms`).
    pub extended: Vec<Millis>,
    /// What successive sweeps return (then 0).
    pub sweeps: VecDeque<usize>,
    pub sweep_calls: u32,
    /// Every delivery given back, with the time it may not be due before.
    pub deferred: Vec<(i64, Option<Millis>)>,
    /// `unclaim` fails while set.
    pub unclaim_fails: bool,
    /// The answer of `next_due`.
    pub next_due: Option<Millis>,
    /// Targets paused by hand: `claim` hands them nothing.
    pub paused: Vec<String>,
}

/// A store for the dispatcher's unit tests: claims come from [`FakeState::due`]; writes are
/// recorded; reads answer empty.
#[derive(Default)]
pub(super) struct FakeStore {
    state: Mutex<FakeState>,
}

impl FakeStore {
    pub fn with<R>(&self, f: impl FnOnce(&mut FakeState) -> R) -> R {
        f(&mut self.state.lock().unwrap())
    }
}

fn failure(what: &str) -> StoreError {
    StoreError::Task(format!("{what} failed (as the test asked)"))
}

#[async_trait]
impl Store for FakeStore {
    async fn ingest(&self, events: Vec<NewEvent>, _now: Millis) -> Result<Vec<Ingested>, StoreError> {
        Ok(events
            .into_iter()
            .map(|e| Ingested {
                id: e.id,
                duplicate: false,
            })
            .collect())
    }

    async fn claim(&self, request: ClaimRequest) -> Result<Vec<Claimed>, StoreError> {
        self.with(|s| {
            s.claims.push(request.limit);
            if s.paused.iter().any(|p| p == request.target.as_str()) {
                return Ok(Vec::new());
            }
            let n = request.limit.min(s.due.len());
            Ok(s.due.drain(..n).collect())
        })
    }

    async fn settle(&self, _owner: &str, batch: Vec<Settlement>) -> Result<SettleReport, StoreError> {
        self.with(|s| {
            s.settle_calls += 1;
            if s.failing_settles > 0 {
                s.failing_settles -= 1;
                return Err(failure("settle"));
            }
            let lost_leases = batch
                .iter()
                .map(|b| b.delivery_id)
                .filter(|id| s.lost.contains(id))
                .collect();
            s.settled.push(batch);
            Ok(SettleReport { lost_leases })
        })
    }

    async fn unclaim(&self, _owner: &str, claims: Vec<(i64, u32)>, until: Option<Millis>) -> Result<usize, StoreError> {
        self.with(|s| {
            if s.unclaim_fails {
                return Err(failure("unclaim"));
            }
            s.unclaimed.extend(&claims);
            s.deferred.extend(claims.iter().map(|c| (c.0, until)));
            Ok(claims.len())
        })
    }

    async fn extend_leases(&self, _owner: &str, now: Millis, lease_ms: Millis) -> Result<usize, StoreError> {
        self.with(|s| s.extended.push(now + lease_ms));
        Ok(0)
    }

    async fn sweep_expired(&self, _now: Millis) -> Result<usize, StoreError> {
        Ok(self.with(|s| {
            s.sweep_calls += 1;
            s.sweeps.pop_front().unwrap_or(0)
        }))
    }

    async fn set_target_paused(&self, _: &TargetName, _: bool, _: Millis) -> Result<bool, StoreError> {
        Ok(false)
    }

    async fn paused_targets(&self) -> Result<Vec<String>, StoreError> {
        Ok(self.with(|s| s.paused.clone()))
    }

    async fn list_failed(&self, _: FailedFilter, _: i64, _: usize) -> Result<Vec<FailedDelivery>, StoreError> {
        Ok(Vec::new())
    }

    async fn count_failed(&self, _: FailedFilter) -> Result<u64, StoreError> {
        Ok(0)
    }

    async fn replay(&self, _: FailedFilter, _: usize, _: Millis) -> Result<usize, StoreError> {
        Ok(0)
    }

    async fn create_replay_job(&self, _: NewReplayJob, _: Millis) -> Result<ReplayJob, StoreError> {
        Err(failure("create_replay_job"))
    }

    async fn replay_job(&self, _: i64) -> Result<Option<ReplayJob>, StoreError> {
        Ok(None)
    }

    async fn replay_jobs(&self, _: usize) -> Result<Vec<ReplayJob>, StoreError> {
        Ok(Vec::new())
    }

    async fn cancel_replay_job(&self, _: i64, _: Millis) -> Result<Option<ReplayJob>, StoreError> {
        Ok(None)
    }

    async fn replay_chunk(&self, _: Option<i64>, _: usize, _: Millis) -> Result<Option<ReplayChunk>, StoreError> {
        Ok(None)
    }

    async fn release(&self, _: &str, _: Millis) -> Result<usize, StoreError> {
        Ok(0)
    }

    async fn recover_orphans(&self, _: Millis) -> Result<usize, StoreError> {
        Ok(0)
    }

    async fn sync_paused(&self, _: Vec<TargetName>) -> Result<(usize, usize), StoreError> {
        Ok((0, 0))
    }

    async fn version_attempts(&self) -> Result<VersionAttempts, StoreError> {
        Ok(VersionAttempts::new())
    }

    async fn next_due(&self, _: &TargetName) -> Result<Option<Millis>, StoreError> {
        Ok(self.with(|s| s.next_due))
    }

    async fn event(&self, _: EventId) -> Result<Option<EventDetail>, StoreError> {
        Ok(None)
    }

    async fn search_events(&self, _: EventFilter, _: usize) -> Result<Vec<EventSummary>, StoreError> {
        Ok(Vec::new())
    }

    async fn probe_write(&self, _: Millis) -> Result<(), StoreError> {
        Ok(())
    }

    async fn status_counts(&self) -> Result<StatusCounts, StoreError> {
        Ok(StatusCounts::new())
    }

    async fn hold_target(&self, _: &TargetName, _: &str, _: Millis) -> Result<usize, StoreError> {
        Ok(0)
    }

    async fn prune_finished(&self, _: Millis, _: usize) -> Result<usize, StoreError> {
        Ok(0)
    }

    async fn prune_idempotency_keys(&self, _: Millis, _: usize) -> Result<usize, StoreError> {
        Ok(0)
    }

    async fn prune_failed(&self, _: FailedFilter, _: usize) -> Result<usize, StoreError> {
        Ok(0)
    }

    async fn cancel(&self, _: EventRef, _: Millis) -> Result<Option<Cancellation>, StoreError> {
        Ok(None)
    }

    async fn erase_payload(&self, _: EventRef, _: Millis) -> Result<Option<(EventId, Erasure)>, StoreError> {
        Ok(None)
    }

    async fn erase_finished_payloads(&self, _: Millis, _: usize, _: Millis) -> Result<usize, StoreError> {
        Ok(0)
    }

    async fn oldest_due(&self, _: Millis) -> Result<BTreeMap<String, Millis>, StoreError> {
        Ok(BTreeMap::new())
    }
}

/// A delivery of `target` claimed for its `attempt`th attempt.
pub(super) fn claimed(id: i64, target: &str, event_type: &str, attempt: u32) -> Claimed {
    Claimed {
        delivery_id: id,
        target: target.parse().unwrap(),
        attempt,
        seq: attempt,
        event: StoredEvent {
            id: EventId::new(),
            event_type: event_type.to_owned(),
            payload: "{}".to_owned(),
            headers: Vec::new(),
            idempotency_key: None,
            ordering_key: None,
            created_at: 0,
            traceparent: None,
        },
    }
}

/// The target a manifest's text describes.
pub(super) fn spec(name: &str, manifest: &str) -> TargetSpec {
    TargetSpec::from_toml(name.parse().unwrap(), manifest, Path::new("/plugins")).unwrap()
}
