//! The outbox store: events, one delivery per (event, target), the attempt history and the
//! producer idempotency ledger, behind the [`Store`] trait that the dispatcher, the API and the
//! CLI speak to. Two backends implement it with one model ([`history`]): [`sqlite`], embedded
//! and exclusive to one `serve`, and [`postgres`], shared by several hosts; [`open`] picks the
//! one the configuration names. Every method works in batches so that one transaction carries
//! many rows. The conformance scenarios (`conformance/`) run against both.

/// A statement of the calling backend's `sql/` folder, by file name (`include_str!` resolves
/// the path from the file that calls the macro: `sqlite/…` or `postgres/…`).
macro_rules! sql {
    ($name:literal) => {
        include_str!(concat!("sql/", $name, ".sql"))
    };
}

pub mod backlog;
#[cfg(test)]
mod conformance;
mod group_commit;
pub mod history;
mod layout;
mod location;
mod model;
pub mod postgres;
pub mod replay_jobs;
pub mod retention;
mod rows;
#[cfg(test)]
mod sql_literals;
pub mod sqlite;
mod template;

pub use location::DatabaseLocation;
pub use replay_jobs::{NewReplayJob, REPLAY_CHUNK, ReplayChunk, ReplayJob};

use std::collections::BTreeMap;
use std::sync::Arc;

use async_trait::async_trait;
use thiserror::Error;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::domain::{EventId, Millis, TargetName};

pub use model::{
    AttemptRecord, Cancellation, CancelledDelivery, ClaimRequest, Claimed, DeliveryDetail, ERASED_HEADERS,
    ERASED_PAYLOAD, Erasure, EventDetail, EventFilter, EventRef, EventSummary, FailedDelivery, FailedFilter, Ingested,
    NewEvent, SettleReport, Settlement, StatusCounts, StoredEvent, TokenGrant, VersionAttempts,
};

/// A failure of the store itself (not of a delivery).
#[derive(Debug, Error)]
pub enum StoreError {
    #[error("database error: {0}")]
    Sqlite(#[from] rusqlite::Error),
    #[error("the database holds a value this version does not understand: {0}")]
    Corrupt(String),
    #[error("database {path} is in use by another `outboxd serve` (lock file {lock})")]
    Locked { path: String, lock: String },
    #[error("cannot open database {path}: {source}")]
    Open {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("database is newer (schema version {found}) than this outboxd supports ({supported})")]
    TooNew { found: i64, supported: i64 },
    #[error("database task failed: {0}")]
    Task(String),
    #[error("PostgreSQL error: {0}")]
    Postgres(#[from] sqlx::Error),
    #[error("cannot connect to PostgreSQL at {url}: {source}")]
    Connect {
        url: String,
        #[source]
        source: sqlx::Error,
    },
    #[error("{0}")]
    Config(String),
    #[error("the filesystem of {path} is full: {free} bytes free (fewer than {MIN_FREE_BYTES})")]
    DiskFull { path: String, free: u64 },
}

/// Below this much room on the database's filesystem, the store does not count as accepting
/// writes (`/readyz`): a transaction of a few pages may still fit, an ingest of any size or a
/// checkpoint may not.
pub const MIN_FREE_BYTES: u64 = 1 << 20;

/// Who opens the store.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// `outboxd serve`: for SQLite, exclusively (the lock file).
    Serve,
    /// A command of the CLI, which may run beside any number of `serve` processes.
    Client,
}

/// Opens the store `location` names: SQLite (created with its directory if missing) or
/// PostgreSQL (schema created or migrated).
pub async fn open(location: &DatabaseLocation, access: Access) -> Result<Arc<dyn Store>, StoreError> {
    match location {
        DatabaseLocation::Sqlite(path) => {
            let path = path.clone();
            let store = tokio::task::spawn_blocking(move || match access {
                Access::Serve => sqlite::SqliteStore::open_exclusive(&path),
                Access::Client => sqlite::SqliteStore::open(&path),
            })
            .await
            .map_err(|e| StoreError::Task(e.to_string()))??;
            Ok(Arc::new(store))
        }
        DatabaseLocation::Postgres(url) => Ok(Arc::new(postgres::PgStore::open(url).await?)),
    }
}

/// Where a store's announcements from other processes go (see [`Store::forward_wakeups`]).
#[derive(Clone)]
pub struct Wakeups {
    /// New due work: wakes this process's idle lanes.
    pub work: Arc<Notify>,
    /// A target resumed by hand: its paused lanes, which do not wake for new work, look again.
    pub resumed: Arc<dyn Fn() + Send + Sync>,
}

/// The outbox's persistence. Implementations must make every method atomic.
///
/// **The attempt history** has one row per attempt, numbered by the delivery's `attempt_seq`
/// and written once, when the attempt settles or is abandoned. While an attempt runs, the
/// in-flight delivery itself stands for it (its `attempt_seq`, started at the claim), and
/// [`Store::event`] shows it as a `running` row. A settled attempt's row started
/// `duration_ms` before it finished. An attempt is abandoned, with one of the
/// [`history::Abandonment`] reasons, when its lease expires, its host releases it or a new
/// `serve` recovers it. A `running` row written by an older version (SQLite schema 3 and
/// older, PostgreSQL before this model) becomes `abandoned` the same way, and a settle
/// replaces it with what the attempt did.
#[async_trait]
pub trait Store: Send + Sync + 'static {
    /// Proves that the store accepts writes now, for `/readyz`: one small committed write
    /// (the one row of `readiness_probe`), and for a database file, at least
    /// [`MIN_FREE_BYTES`] free on its filesystem ([`StoreError::DiskFull`]).
    async fn probe_write(&self, now: Millis) -> Result<(), StoreError>;

    /// Accepts a batch atomically: each event with one pending delivery per target, due
    /// `now`. An event whose idempotency key is known writes nothing and reports the first id.
    async fn ingest(&self, events: Vec<NewEvent>, now: Millis) -> Result<Vec<Ingested>, StoreError>;

    /// Claims up to `request.limit` due deliveries of `request.target` for `request.owner`
    /// for `request.lease_ms`: pending ones whose time has come, and in-flight ones whose
    /// lease has expired (their attempt is abandoned). Each claim counts an attempt and takes
    /// the next history number; its row is written when it ends. With `ordered`, a delivery
    /// with an ordering key is due only when every earlier delivery of the same key to the
    /// target is final. Nothing is claimed while the target is paused by hand. The claimed
    /// deliveries come in id order.
    ///
    /// **Lease times** (the expiry a claim or heartbeat sets, and whether a lease has expired,
    /// for a claim, heartbeat or sweep) are taken from the store's clock: for a store one host
    /// owns (SQLite), the `now` the caller passes; for a shared store (PostgreSQL), the
    /// database's clock, so that hosts whose clocks disagree still agree on every lease. What
    /// is due (`next_attempt_at`) and when an attempt started stay on the caller's `now`.
    async fn claim(&self, request: ClaimRequest) -> Result<Vec<Claimed>, StoreError>;

    /// Writes attempt outcomes, in delivery id order. A delivery changes only while `owner`
    /// still holds its lease for that attempt; the attempt's history row is written either way.
    async fn settle(&self, owner: &str, batch: Vec<Settlement>) -> Result<SettleReport, StoreError>;

    /// Gives back deliveries that `owner` claimed but never started (a lane's read-ahead when
    /// the lane stops or its breaker opens, a retry its retry budget held back): each is
    /// pending again as if it had not been claimed, its attempt uncounted (no history row was
    /// written for it), and not due before `until` if that is later than its due time.
    /// `claims` are `(delivery id, attempt seq)`; one whose lease `owner` no longer holds for
    /// that seq is left alone. Returns how many were given back.
    async fn unclaim(&self, owner: &str, claims: Vec<(i64, u32)>, until: Option<Millis>) -> Result<usize, StoreError>;

    /// The heartbeat: extends every lease `owner` still holds to at least `lease_ms` from now
    /// (the store's clock, see [`Store::claim`]). A lease that has already expired is not
    /// extended: it belongs to the sweeper (or a claim's take-over) now, and its outcome will be
    /// a lost lease.
    async fn extend_leases(&self, owner: &str, now: Millis, lease_ms: Millis) -> Result<usize, StoreError>;

    /// The sweeper: returns in-flight deliveries whose lease expired (their worker is gone;
    /// by the store's clock, see [`Store::claim`]) to pending, due `now`, whatever their
    /// target; their attempt is abandoned.
    async fn sweep_expired(&self, now: Millis) -> Result<usize, StoreError>;

    /// Pauses (`true`) or resumes a target by hand. Returns whether that changed anything.
    async fn set_target_paused(&self, target: &TargetName, paused: bool, now: Millis) -> Result<bool, StoreError>;

    /// Targets paused by hand.
    async fn paused_targets(&self) -> Result<Vec<String>, StoreError>;

    /// Failed deliveries matching `filter` with an id above `after`, oldest first. An event-type
    /// glob knows `*` and `?`; every other character is literal.
    async fn list_failed(
        &self,
        filter: FailedFilter,
        after: i64,
        limit: usize,
    ) -> Result<Vec<FailedDelivery>, StoreError>;

    /// How many failed deliveries match `filter`.
    async fn count_failed(&self, filter: FailedFilter) -> Result<u64, StoreError>;

    /// Replays up to `limit` failed deliveries matching `filter`: each is pending again, due
    /// `now`, with its attempt count reset and its history kept. A delivery of an event whose
    /// payload was erased is not replayed. Returns how many; a delivery
    /// that is not failed (already replayed) is left alone, so replay is idempotent.
    async fn replay(&self, filter: FailedFilter, limit: usize, now: Millis) -> Result<usize, StoreError>;

    /// Creates a bulk replay job over `job.filter` at `now` ([`replay_jobs`]): bounded by
    /// the highest delivery id stored now and by `now` as the failure time, with the number of
    /// its matches (at most its cap) as its total. [`Store::replay_chunk`] works it.
    async fn create_replay_job(&self, job: NewReplayJob, now: Millis) -> Result<ReplayJob, StoreError>;

    /// One replay job, or `None` when there is no such job.
    async fn replay_job(&self, id: i64) -> Result<Option<ReplayJob>, StoreError>;

    /// The `limit` most recent replay jobs, newest first.
    async fn replay_jobs(&self, limit: usize) -> Result<Vec<ReplayJob>, StoreError>;

    /// Cancels a running replay job at `now`: no chunk runs after this (one running now
    /// commits first); what earlier chunks replayed stays replayed. A final job is left as it
    /// is. Returns the job, or `None` when there is no such job.
    async fn cancel_replay_job(&self, id: i64, now: Millis) -> Result<Option<ReplayJob>, StoreError>;

    /// Works one chunk of the oldest running replay job (or of `job` only) that no other
    /// handle is working, in ONE transaction: up to `size` of its next matches after its cursor are replayed (as
    /// [`Store::replay`]; those of erased events are skipped), and its cursor, counts and
    /// status advance. The job is `done` once nothing is left up to its bound (or its cap is
    /// reached). Returns what the chunk did, or `None` when no job is waiting.
    async fn replay_chunk(&self, job: Option<i64>, size: usize, now: Millis)
    -> Result<Option<ReplayChunk>, StoreError>;

    /// Cancels the event `event` names: its deliveries that are `pending`, `paused` or `dead`
    /// become `cancelled` (final; never claimed, replayed or counted as failed again), at
    /// `now`, with their history kept. An `in_flight` delivery is left to finish its attempt
    /// (and a retry of it makes it pending again, for another cancellation to take); the
    /// final ones stay as they are. Returns every delivery with its status before and after,
    /// in target order, or `None` when no such event is stored (for a producer key: the
    /// ledger does not know it, or its event is gone). Idempotent.
    async fn cancel(&self, event: EventRef, now: Millis) -> Result<Option<Cancellation>, StoreError>;

    /// Erases the payload and headers of the event `event` names, at `now`, if every delivery
    /// of it is final ([`DeliveryStatus::is_final`](crate::domain::DeliveryStatus::is_final)):
    /// the event row, its deliveries, their history and its producer key stay, with
    /// `erased_at`. An erased event's failed deliveries are never replayed (it has no payload
    /// to deliver): [`Store::replay`] leaves them. Returns the event's id with what happened,
    /// or `None` when there is no such event.
    async fn erase_payload(&self, event: EventRef, now: Millis) -> Result<Option<(EventId, Erasure)>, StoreError>;

    /// Retention of payloads: erases (as [`Store::erase_payload`], at `now`) the payloads of up
    /// to `limit` events created before `before` whose deliveries are all `delivered`,
    /// `discarded` or `cancelled` (or that have none) and that were not erased yet. Returns how
    /// many; call again while it returns `limit`.
    async fn erase_finished_payloads(&self, before: Millis, limit: usize, now: Millis) -> Result<usize, StoreError>;

    /// Returns every delivery `owner` holds to `pending`, due `now` (graceful shutdown); their
    /// attempt is abandoned.
    async fn release(&self, owner: &str, now: Millis) -> Result<usize, StoreError>;

    /// Returns every in-flight delivery to `pending`, due `now`, abandoning its attempt. Only
    /// for a store that a single host owns exclusively, at start-up: whatever is in flight was
    /// left by a crashed predecessor.
    async fn recover_orphans(&self, now: Millis) -> Result<usize, StoreError>;

    /// Pauses the pending deliveries of every target not in `live`, and resumes the paused
    /// ones of every target in it. Returns (paused, resumed).
    async fn sync_paused(&self, live: Vec<TargetName>) -> Result<(usize, usize), StoreError>;

    /// How many attempts each plugin version of each target has run.
    async fn version_attempts(&self) -> Result<VersionAttempts, StoreError>;

    /// The earliest `next_attempt_at` among `target`'s pending deliveries; `None` while the
    /// target is paused by hand (nothing of it is due: its lanes sleep until a wake-up, such as
    /// the resumption, rather than claim nothing over and over).
    async fn next_due(&self, target: &TargetName) -> Result<Option<Millis>, StoreError>;

    /// One event with its deliveries and their history.
    async fn event(&self, id: EventId) -> Result<Option<EventDetail>, StoreError>;

    /// Up to `limit` events matching `filter`, newest first, each with its deliveries'
    /// statuses.
    async fn search_events(&self, filter: EventFilter, limit: usize) -> Result<Vec<EventSummary>, StoreError>;

    /// Delivery counts per target and status.
    async fn status_counts(&self) -> Result<StatusCounts, StoreError>;

    /// Per target, its backlog: deliveries `pending`, `in_flight` or `paused` (targets
    /// without any are absent). The default reads [`Store::status_counts`] (on SQLite a scan
    /// of the `(target, status, …)` index, no table rows); PostgreSQL counts in its partial
    /// indexes of those statuses only, so the cost follows the backlog, not the table.
    async fn backlog_counts(&self) -> Result<BTreeMap<String, u64>, StoreError> {
        Ok(self
            .status_counts()
            .await?
            .into_iter()
            .filter_map(|(target, counts)| {
                let n: u64 = counts.iter().filter(|(s, _)| s.is_backlog()).map(|(_, n)| n).sum();
                (n > 0).then_some((target, n))
            })
            .collect())
    }

    /// Holds a target whose plugin does not load: its `pending` deliveries become `paused`
    /// with `reason` as their last error (as do paused ones with another last error). [`Store::sync_paused`] resumes them once the target
    /// is live. Returns how many were held.
    async fn hold_target(&self, target: &TargetName, reason: &str, now: Millis) -> Result<usize, StoreError>;

    /// Retention: deletes up to `limit` events created before `before` whose deliveries are
    /// all `delivered`, `discarded` or `cancelled` (or that have none), with their deliveries
    /// and attempt history, in one short transaction. Events with a `dead`, pending, in-flight or paused
    /// delivery are kept. Idempotency-ledger entries are not touched (see
    /// [`Store::prune_idempotency_keys`]). Returns how many events were deleted; call again
    /// while it returns `limit`.
    async fn prune_finished(&self, before: Millis, limit: usize) -> Result<usize, StoreError>;

    /// Retention of the idempotency ledger: deletes up to `limit` producer keys recorded
    /// before `before`. A key outlives its event when the ledger's window is longer, so a
    /// late producer retry is still recognised as a duplicate. Returns how many.
    async fn prune_idempotency_keys(&self, before: Millis, limit: usize) -> Result<usize, StoreError>;

    /// `outboxd prune`: deletes up to `limit` failed (`dead`/`discarded`) deliveries matching
    /// `filter`, with their history, and then every event left with no delivery. Returns how
    /// many deliveries were deleted; call again while it returns `limit`.
    async fn prune_failed(&self, filter: FailedFilter, limit: usize) -> Result<usize, StoreError>;

    /// Per target, the earliest `next_attempt_at` among its `pending` deliveries that are due
    /// at `now` (the lag metric: how long the oldest due delivery has been waiting). Targets
    /// with nothing due are absent.
    async fn oldest_due(&self, now: Millis) -> Result<BTreeMap<String, Millis>, StoreError>;

    /// Whether several hosts may serve from this store at once. A shared store has no
    /// exclusive owner: `serve` does not call [`Store::recover_orphans`] (leases expire and
    /// the sweeper of any host returns them), and rate limits are kept in the store.
    fn is_shared(&self) -> bool {
        false
    }

    /// Takes up to `want` tokens of `target`'s rate limit (`rate` per second, burst
    /// `max(rate, 1)`) for the whole cluster. `None`: this store keeps no rate limits and the
    /// lane keeps its own bucket.
    async fn take_tokens(
        &self,
        _target: &TargetName,
        _rate: f64,
        _want: usize,
    ) -> Result<Option<TokenGrant>, StoreError> {
        Ok(None)
    }

    /// Gives back `n` tokens taken by [`Store::take_tokens`] but not used.
    async fn give_back_tokens(&self, _target: &TargetName, _rate: f64, _n: usize) -> Result<(), StoreError> {
        Ok(())
    }

    /// Passes on what other processes announce (new due work, a target resumed by hand) to
    /// `to`, until `stop`. The default has no such channel (lanes poll).
    async fn forward_wakeups(&self, _to: Wakeups, stop: CancellationToken) {
        stop.cancelled().await
    }
}
