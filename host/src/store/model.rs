//! The store's vocabulary of requests and records: what the dispatcher, the API and the CLI
//! hand to a [`Store`](super::Store) and get back, the same for every backend.

use std::collections::BTreeMap;
use std::time::Duration;

use crate::domain::{
    AttemptOutcome, DeliveryStatus, EventId, EventType, Millis, ProducerKey, ReceiverResponse, TargetName,
};
use crate::telemetry::trace_context::TraceParent;

/// What a shared rate limit granted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TokenGrant {
    /// Tokens taken (at most those asked for); 0 when the bucket is empty.
    pub granted: usize,
    /// With nothing granted, how long until one token is due.
    pub wait: Duration,
}

/// An event to accept, already validated and routed.
#[derive(Debug, Clone)]
pub struct NewEvent {
    pub id: EventId,
    pub event_type: EventType,
    /// The payload as JSON text.
    pub payload: String,
    pub headers: Vec<(String, String)>,
    pub idempotency_key: Option<ProducerKey>,
    /// Events with the same key reach an `ordered` target one after another, in order.
    pub ordering_key: Option<String>,
    /// The targets subscribed to this event: one delivery each.
    pub targets: Vec<TargetName>,
    /// When its deliveries become due; `None`: at acceptance. Later for a scheduled event,
    /// earlier for a priority's head start (see `outbox::input::route`).
    pub due_at: Option<Millis>,
    /// The trace its deliveries join (see `telemetry::traces`).
    pub traceparent: Option<TraceParent>,
}

/// What ingesting one event did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ingested {
    /// The event's id: the new one, or the first event's for a repeated idempotency key.
    pub id: EventId,
    /// The idempotency key had been seen: nothing was written.
    pub duplicate: bool,
}

/// An accepted event as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredEvent {
    pub id: EventId,
    pub event_type: String,
    pub payload: String,
    pub headers: Vec<(String, String)>,
    pub idempotency_key: Option<String>,
    pub ordering_key: Option<String>,
    pub created_at: Millis,
    /// The trace its deliveries join, if it carries one.
    pub traceparent: Option<TraceParent>,
}

/// A delivery claimed under a lease, with its event, ready to attempt.
#[derive(Debug, Clone)]
pub struct Claimed {
    pub delivery_id: i64,
    pub target: TargetName,
    /// This attempt's number towards the retry budget, 1-based (a replay starts again at 1).
    pub attempt: u32,
    /// This attempt's number over the delivery's whole history: its history row, and the
    /// lease's identity.
    pub seq: u32,
    pub event: StoredEvent,
}

/// What [`Store::claim`](super::Store::claim) asks for: up to `limit` due deliveries of
/// `target`, leased to `owner` for `lease_ms` from the store's clock (see
/// [`Store::claim`](super::Store::claim)).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClaimRequest {
    pub target: TargetName,
    pub limit: usize,
    /// The lease owner: this process (`<pid>-<uuid>`).
    pub owner: String,
    /// This host's time: what is due, and when the attempt started.
    pub now: Millis,
    /// How long the lease lasts from the claim.
    pub lease_ms: Millis,
    /// The target keeps per-key FIFO: a delivery with an ordering key is due only when every
    /// earlier delivery of its key to the target is final.
    pub ordered: bool,
}

/// The result of one attempt, to be written if the lease is still ours.
#[derive(Debug, Clone)]
pub struct Settlement {
    pub target: TargetName,
    pub delivery_id: i64,
    /// The history number (`Claimed::seq`) the lease was taken for.
    pub seq: u32,
    pub status: DeliveryStatus,
    pub next_attempt_at: Millis,
    pub last_error: Option<String>,
    pub outcome: AttemptOutcome,
    pub finished_at: Millis,
    pub duration_ms: u64,
    /// Content hash of the plugin version that ran the attempt.
    pub plugin_hash: Option<String>,
    /// What the receiver last answered during the attempt, if it answered.
    pub response: Option<ReceiverResponse>,
    /// What the plugin attached to the attempt (`report.detail`), at most a KiB.
    pub detail: Option<String>,
    /// Events to accept in the same transaction, if the lease was still ours (operational
    /// events such as `outboxd.delivery.dead`).
    pub emit: Vec<NewEvent>,
}

#[cfg(test)]
impl Settlement {
    /// For tests: attempt 1 of delivery `id` of `target`, delivered at `at` after 4 ms by no
    /// particular plugin version, emitting nothing. Tests change what they need.
    pub(crate) fn delivered(target: &str, id: i64, at: Millis) -> Self {
        Self {
            target: target.parse().expect("a valid target name"),
            delivery_id: id,
            seq: 1,
            status: DeliveryStatus::Delivered,
            next_attempt_at: at,
            last_error: None,
            outcome: AttemptOutcome::Delivered,
            finished_at: at,
            duration_ms: 4,
            plugin_hash: None,
            response: None,
            detail: None,
            emit: Vec::new(),
        }
    }
}

/// What a settle batch did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct SettleReport {
    /// Deliveries whose lease was no longer ours, in id order: their outcome was recorded in
    /// the attempt history but did not change the delivery.
    pub lost_leases: Vec<i64>,
}

/// One row of the attempt history.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AttemptRecord {
    pub n: u32,
    pub started_at: Millis,
    pub duration_ms: Option<u64>,
    pub outcome: AttemptOutcome,
    pub error: Option<String>,
    pub plugin_hash: Option<String>,
    /// What the receiver last answered during the attempt (none while it runs, when it was
    /// abandoned, or when no request of it was answered).
    pub response: Option<ReceiverResponse>,
    /// What the plugin attached to the attempt (`report.detail`), if anything.
    pub detail: Option<String>,
}

impl AttemptRecord {
    /// The attempt `n` of a delivery in flight since `started_at`: nothing known of it yet.
    pub fn running(n: u32, started_at: Millis) -> Self {
        Self {
            n,
            started_at,
            duration_ms: None,
            outcome: AttemptOutcome::Running,
            error: None,
            plugin_hash: None,
            response: None,
            detail: None,
        }
    }
}

/// One delivery with its history, for the status API.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeliveryDetail {
    pub target: TargetName,
    pub status: DeliveryStatus,
    pub attempts: u32,
    pub last_error: Option<String>,
    pub next_attempt_at: Option<Millis>,
    pub delivered_at: Option<Millis>,
    pub history: Vec<AttemptRecord>,
}

/// An event with all its deliveries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventDetail {
    /// The event; once erased, its payload is [`ERASED_PAYLOAD`] and it has no headers.
    pub event: StoredEvent,
    pub deliveries: Vec<DeliveryDetail>,
    /// When its payload and headers were erased, if they were.
    pub erased_at: Option<Millis>,
}

/// What an erased event's payload is stored as: JSON `null` (the column stays `NOT NULL`).
pub const ERASED_PAYLOAD: &str = "null";
/// What an erased event's headers are stored as: none.
pub const ERASED_HEADERS: &str = "[]";

/// What erasing an event's payload did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Erasure {
    /// Erased now, at this time.
    Erased { at: Millis },
    /// It had been erased before, at this time: nothing changed.
    AlreadyErased { at: Millis },
    /// Not erased: these deliveries (target, status) are not final yet.
    NotFinal(Vec<(TargetName, DeliveryStatus)>),
}

/// Deliveries per status, per target name.
pub type StatusCounts = BTreeMap<String, BTreeMap<DeliveryStatus, u64>>;

/// Attempts per plugin content hash, per target name.
pub type VersionAttempts = BTreeMap<String, BTreeMap<String, u64>>;

/// Which failed (dead or discarded) deliveries a listing or replay applies to. Every field
/// narrows the set; the default matches every failed delivery.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FailedFilter {
    /// Only these statuses (each `dead` or `discarded`); empty for both.
    pub statuses: Vec<DeliveryStatus>,
    pub target: Option<TargetName>,
    /// Event-type glob (`*`, `?`), as in manifests.
    pub event_type: Option<String>,
    /// Failed at or after this time.
    pub since: Option<Millis>,
    /// Failed before this time.
    pub until: Option<Millis>,
    /// The last error contains this text (case-insensitive).
    pub error_contains: Option<String>,
    /// Only these deliveries.
    pub delivery_ids: Vec<i64>,
    /// Only deliveries with an id above the first and at most the second (a replay job's
    /// window).
    pub id_range: Option<(i64, i64)>,
}

impl FailedFilter {
    /// The statuses the filter matches: those it names that are failed (`dead`,
    /// `discarded`), or both when it names none. Empty when it names only others, so that
    /// it matches nothing.
    pub fn failed_statuses(&self) -> Vec<DeliveryStatus> {
        const FAILED: [DeliveryStatus; 2] = [DeliveryStatus::Dead, DeliveryStatus::Discarded];
        if self.statuses.is_empty() {
            FAILED.to_vec()
        } else {
            self.statuses.iter().copied().filter(|s| FAILED.contains(s)).collect()
        }
    }
}

/// Which events a search returns. Every field narrows the set; the default matches every
/// event. Events come newest first (by id, a UUIDv7), a page at a time.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EventFilter {
    /// Event-type glob (`*`, `?`), as in manifests.
    pub event_type: Option<String>,
    /// The producer's idempotency key, exactly; found through the idempotency ledger, so
    /// while the ledger keeps it (`idempotency_retention`).
    pub key: Option<String>,
    /// Only events with a delivery in this status (to `target`, when given).
    pub status: Option<DeliveryStatus>,
    /// Only events with a delivery to this target.
    pub target: Option<TargetName>,
    /// Accepted at or after this time.
    pub since: Option<Millis>,
    /// Accepted before this time.
    pub until: Option<Millis>,
    /// Only events older than this one (the next page).
    pub before: Option<EventId>,
}

/// An event as a search lists it: what it is and where its deliveries stand.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventSummary {
    pub id: EventId,
    pub event_type: String,
    pub idempotency_key: Option<String>,
    pub created_at: Millis,
    /// Each delivery's target and status, by target.
    pub deliveries: Vec<(TargetName, DeliveryStatus)>,
}

/// A failed delivery, for the dead-letter listing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FailedDelivery {
    pub delivery_id: i64,
    pub event_id: EventId,
    pub event_type: String,
    pub target: TargetName,
    pub status: DeliveryStatus,
    pub attempts: u32,
    pub last_error: Option<String>,
    /// When it failed for good.
    pub failed_at: Millis,
    /// What the receiver answered to its last attempt, if it answered.
    pub last_response: Option<ReceiverResponse>,
}

/// Which event an operation names: its id, or the producer idempotency key it was first
/// accepted with (looked up in the idempotency ledger).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EventRef {
    Id(EventId),
    ProducerKey(ProducerKey),
}

/// What a cancellation did to one delivery of the event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CancelledDelivery {
    pub target: TargetName,
    /// Its status before the cancellation.
    pub was: DeliveryStatus,
    /// Its status after it: `cancelled` when the cancellation took it
    /// ([`DeliveryStatus::is_cancellable`]), else unchanged.
    pub status: DeliveryStatus,
}

/// What cancelling an event did: every delivery of it, by target name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cancellation {
    pub event_id: EventId,
    pub deliveries: Vec<CancelledDelivery>,
}
