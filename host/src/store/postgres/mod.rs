//! The shared store: PostgreSQL, for several `outboxd serve` hosts delivering from one
//! database. Hosts share the work through the database alone: claims take due deliveries with
//! `FOR UPDATE SKIP LOCKED` under a lease (owner + expiry), a settle changes a delivery only
//! while its owner still holds that lease, and a host that dies simply lets its leases expire
//! (there is no lock file and no start-up recovery). What must hold cluster-wide lives in the
//! database too: the idempotency ledger, the manual pause, the per-key FIFO, the rate limit of
//! each target ([`rate`]) and which targets are loaded somewhere ([`hosts`]). Ingest, replay
//! and resume wake the idle lanes of every host ([`wakeups`]).
//!
//! This module owns the pool and the one way a transaction is run on it
//! ([`PgStore::transaction`]: short, never spanning a plugin call, run again on a deadlock or
//! serialization failure); the operations live in one module per concern and their SQL in
//! `sql/`, the schema in `migrations/`. Rows are always locked deliveries first, then attempts,
//! and several deliveries in id order (or with `SKIP LOCKED`), so that hosts cannot deadlock.

use std::collections::BTreeMap;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use sqlx::postgres::{PgConnectOptions, PgConnection, PgPool, PgPoolOptions};
use sqlx::{Connection, Postgres};
use tokio::sync::Semaphore;

use super::history::{InFlight, settle_order};
use super::replay_jobs::{NewReplayJob, ReplayChunk, ReplayJob};
use super::{
    Cancellation, ClaimRequest, Claimed, Erasure, EventDetail, EventFilter, EventRef, EventSummary, FailedDelivery,
    FailedFilter, Ingested, NewEvent, SettleReport, Settlement, StatusCounts, Store, StoreError, TokenGrant,
    VersionAttempts,
};
use crate::domain::{EventId, Millis, TargetName, now_ms};

mod admin;
mod claim;
mod counted;
mod filters;
mod hosts;
mod ingest;
mod leases;
mod queries;
mod rate;
mod replay_jobs;
mod schema;
mod settle;
#[cfg(test)]
mod tests;
mod wakeups;

/// Connections per host.
const POOL_SIZE: u32 = 16;
/// How often a transaction that lost a deadlock or serialization conflict is tried again.
const RETRIES: u32 = 5;
/// Most in-flight deliveries returned by one transaction of a sweep, release or recovery.
const SWEEP_CHUNK: i64 = 1_000;

/// Connections per host for claims, whose commits do not wait for the WAL flush.
const CLAIM_POOL_SIZE: u32 = 4;

/// A transaction on a pooled connection.
type Tx = sqlx::Transaction<'static, Postgres>;

/// Whose clock lease times are read from: when a claim or heartbeat makes a lease end, and
/// whether a lease has ended (claim, heartbeat, sweep).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum LeaseClock {
    /// The database's (`statement_timestamp()`, in epoch milliseconds): one clock for every
    /// host, whatever their own clocks say. Always, outside of tests.
    Database,
    /// The `now` each call passes: the conformance scenarios, which play on a made-up timeline
    /// (a claim at 100, a sweep at 1 000) that both stores must read alike.
    #[cfg(test)]
    Caller,
}

impl LeaseClock {
    /// What to bind as a statement's lease clock: `NULL` for the database's, else `now`.
    fn bind(self, now: Millis) -> Option<Millis> {
        (self != LeaseClock::Database).then_some(now)
    }
}

/// The PostgreSQL store.
#[derive(Clone)]
pub struct PgStore {
    pool: PgPool,
    /// Connections whose commits do not wait for the WAL flush (`synchronous_commit = off` for
    /// the session): claims ([`PgStore::relaxed_transaction`]).
    claims: PgPool,
    /// This process's entry in `cluster_hosts`.
    host_id: String,
    /// Whose clock lease times are read from.
    clock: LeaseClock,
    /// Concurrent ingests, written together ([`ingest`]).
    ingests: Arc<ingest::IngestGroup>,
    /// The ingest writer: one group written at a time.
    ingest_gate: Arc<Semaphore>,
    /// A second ingest writer, for large requests only ([`ingest::SPARE_WRITER_FROM`]).
    spare_ingest_gate: Arc<Semaphore>,
    /// Announces what ingest wrote, after its commit.
    announcer: Arc<wakeups::Announcer>,
}

impl std::fmt::Debug for PgStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgStore").finish_non_exhaustive()
    }
}

/// `url` with any password replaced by `***`, for messages.
pub fn redact(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    let authority_end = rest.find(['/', '?']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(authority_end);
    match authority.rsplit_once('@') {
        Some((userinfo, host)) if userinfo.contains(':') => {
            let user = userinfo.split(':').next().unwrap_or_default();
            format!("{scheme}://{user}:***@{host}{tail}")
        }
        _ => url.to_owned(),
    }
}

/// Whether a failed transaction may simply be run again: a deadlock or serialization failure.
fn retryable(e: &StoreError) -> bool {
    match e {
        StoreError::Postgres(sqlx::Error::Database(db)) => matches!(db.code().as_deref(), Some("40P01" | "40001")),
        _ => false,
    }
}

impl PgStore {
    /// Connects to the database at `url`, creating or migrating its schema (under an advisory
    /// lock, so hosts starting together migrate once).
    pub async fn open(url: &str) -> Result<Self, StoreError> {
        Self::open_on(url, LeaseClock::Database).await
    }

    /// [`PgStore::open`] with lease times read from the caller's `now` (see [`LeaseClock`]).
    #[cfg(test)]
    pub(crate) async fn open_on_caller_clock(url: &str) -> Result<Self, StoreError> {
        Self::open_on(url, LeaseClock::Caller).await
    }

    async fn open_on(url: &str, clock: LeaseClock) -> Result<Self, StoreError> {
        let options = PgConnectOptions::from_str(url)
            .map_err(|e| StoreError::Config(format!("database URL {}: {e}", redact(url))))?
            .application_name("outboxd");
        let connect_error = |source| StoreError::Connect {
            url: redact(url),
            source,
        };
        let conn = PgConnection::connect_with(&options).await.map_err(connect_error)?;
        schema::migrate(conn).await?;
        // No ping before each use, a round trip per transaction: a connection that broke while
        // idle fails at `BEGIN` (see `run_transaction`) or fails its statement.
        let pool = PgPoolOptions::new()
            .max_connections(POOL_SIZE)
            .test_before_acquire(false)
            .acquire_timeout(Duration::from_secs(10))
            .connect_with(options.clone())
            .await
            .map_err(connect_error)?;
        let claims = PgPoolOptions::new()
            .max_connections(CLAIM_POOL_SIZE)
            .test_before_acquire(false)
            .acquire_timeout(Duration::from_secs(10))
            .connect_with(options.options([("synchronous_commit", "off")]))
            .await
            .map_err(connect_error)?;
        Ok(Self {
            pool,
            claims,
            host_id: uuid::Uuid::now_v7().simple().to_string(),
            clock,
            ingests: Arc::default(),
            ingest_gate: Arc::new(Semaphore::new(1)),
            spare_ingest_gate: Arc::new(Semaphore::new(1)),
            announcer: Arc::default(),
        })
    }

    /// Runs `body` in one transaction: begun, handed to `body` (which hands it back with its
    /// result), committed. An error rolls it back; a deadlock or serialization failure runs it
    /// again (a few times, after a short pause).
    async fn transaction<T, F, Fut>(&self, body: F) -> Result<T, StoreError>
    where
        T: Send,
        F: FnMut(Tx) -> Fut + Send,
        Fut: Future<Output = Result<(Tx, T), StoreError>> + Send,
    {
        self.run_transaction(&self.pool, body).await
    }

    /// [`PgStore::transaction`] on a connection whose commits do not wait for the WAL flush
    /// (`synchronous_commit = off`): for writes that a crash of the server may undo without
    /// losing anything accepted. A claim is one: undone, its deliveries are pending again (an
    /// attempt that ran meanwhile is made again: at least once). The flush of any later
    /// synchronous commit carries it to disk anyway.
    async fn relaxed_transaction<T, F, Fut>(&self, body: F) -> Result<T, StoreError>
    where
        T: Send,
        F: FnMut(Tx) -> Fut + Send,
        Fut: Future<Output = Result<(Tx, T), StoreError>> + Send,
    {
        self.run_transaction(&self.claims, body).await
    }

    async fn run_transaction<T, F, Fut>(&self, pool: &PgPool, mut body: F) -> Result<T, StoreError>
    where
        T: Send,
        F: FnMut(Tx) -> Fut + Send,
        Fut: Future<Output = Result<(Tx, T), StoreError>> + Send,
    {
        let mut tries = 0;
        loop {
            let attempt = async {
                let tx = match pool.begin().await {
                    Ok(tx) => tx,
                    // The pool does not test a connection before handing it out (a round trip
                    // each time): one that broke while idle fails here, before anything was
                    // done, and is closed; the next one is tried.
                    Err(e @ (sqlx::Error::Io(_) | sqlx::Error::Protocol(_))) => {
                        tracing::debug!(error = %e, "a pooled connection failed at BEGIN; trying another");
                        pool.begin().await?
                    }
                    Err(e) => return Err(e.into()),
                };
                let (tx, out) = body(tx).await?;
                counted::count(2);
                tx.commit().await?;
                Ok(out)
            };
            match attempt.await {
                Err(e) if tries < RETRIES && retryable(&e) => {
                    tries += 1;
                    tokio::time::sleep(Duration::from_millis(5 * u64::from(tries))).await;
                }
                other => return other,
            }
        }
    }

    /// Returns the deliveries of `which` to pending in chunks, one transaction each, waking
    /// every host when something came back.
    async fn return_in_flight(&self, which: InFlight<'_>, now: Millis) -> Result<usize, StoreError> {
        let mut total = 0;
        loop {
            let n = self
                .transaction(|mut tx| async move {
                    let n = leases::return_in_flight(&mut tx, which, now, self.clock).await?;
                    if n > 0 {
                        wakeups::notify(&mut tx).await?;
                    }
                    Ok((tx, n))
                })
                .await?;
            total += n;
            if (n as i64) < SWEEP_CHUNK {
                return Ok(total);
            }
        }
    }
}

#[async_trait]
impl Store for PgStore {
    async fn ingest(&self, events: Vec<NewEvent>, now: Millis) -> Result<Vec<Ingested>, StoreError> {
        ingest::ingest(self, events, now).await
    }

    async fn claim(&self, request: ClaimRequest) -> Result<Vec<Claimed>, StoreError> {
        claim::claim(self, &request).await
    }

    async fn settle(&self, owner: &str, batch: Vec<Settlement>) -> Result<SettleReport, StoreError> {
        let batch = &settle_order(batch);
        let report = self
            .transaction(|mut tx| async move {
                let report = settle::settle(&mut tx, owner, batch).await?;
                Ok((tx, report))
            })
            .await?;
        if let Err(e) = settle::count_versions(&self.claims, batch).await {
            tracing::warn!(error = %e, "could not count the attempts per plugin version of a settled batch");
        }
        Ok(report)
    }

    async fn unclaim(&self, owner: &str, claims: Vec<(i64, u32)>, until: Option<Millis>) -> Result<usize, StoreError> {
        let claims = &claims;
        self.transaction(|mut tx| async move {
            let n = leases::unclaim(&mut tx, owner, claims, until).await?;
            Ok((tx, n))
        })
        .await
    }

    async fn extend_leases(&self, owner: &str, now: Millis, lease_ms: Millis) -> Result<usize, StoreError> {
        let n = leases::extend(&self.pool, owner, lease_ms, self.clock.bind(now)).await?;
        hosts::refresh(&self.pool, &self.host_id, lease_ms).await?;
        Ok(n)
    }

    async fn sweep_expired(&self, now: Millis) -> Result<usize, StoreError> {
        self.return_in_flight(InFlight::Expired(now), now).await
    }

    async fn set_target_paused(&self, target: &TargetName, paused: bool, now: Millis) -> Result<bool, StoreError> {
        self.transaction(|mut tx| async move {
            let changed = admin::set_target_paused(&mut tx, target, paused, now).await?;
            Ok((tx, changed))
        })
        .await
    }

    async fn paused_targets(&self) -> Result<Vec<String>, StoreError> {
        queries::paused_targets(&self.pool).await
    }

    async fn list_failed(
        &self,
        filter: FailedFilter,
        after: i64,
        limit: usize,
    ) -> Result<Vec<FailedDelivery>, StoreError> {
        queries::list_failed(&self.pool, &filter, after, limit).await
    }

    async fn count_failed(&self, filter: FailedFilter) -> Result<u64, StoreError> {
        queries::count_failed(&self.pool, &filter).await
    }

    async fn replay(&self, filter: FailedFilter, limit: usize, now: Millis) -> Result<usize, StoreError> {
        let filter = &filter;
        self.transaction(|mut tx| async move {
            let n = admin::replay(&mut tx, filter, limit, now).await?;
            Ok((tx, n))
        })
        .await
    }

    async fn create_replay_job(&self, job: NewReplayJob, now: Millis) -> Result<ReplayJob, StoreError> {
        let job = &job;
        self.transaction(|mut tx| async move {
            let created = replay_jobs::create(&mut tx, job, now).await?;
            Ok((tx, created))
        })
        .await
    }

    async fn replay_job(&self, id: i64) -> Result<Option<ReplayJob>, StoreError> {
        replay_jobs::get(&self.pool, id).await
    }

    async fn replay_jobs(&self, limit: usize) -> Result<Vec<ReplayJob>, StoreError> {
        replay_jobs::list(&self.pool, limit).await
    }

    async fn cancel_replay_job(&self, id: i64, now: Millis) -> Result<Option<ReplayJob>, StoreError> {
        self.transaction(|mut tx| async move {
            let job = replay_jobs::cancel(&mut tx, id, now).await?;
            Ok((tx, job))
        })
        .await
    }

    async fn replay_chunk(
        &self,
        job: Option<i64>,
        size: usize,
        now: Millis,
    ) -> Result<Option<ReplayChunk>, StoreError> {
        self.transaction(|mut tx| async move {
            let done = replay_jobs::chunk(&mut tx, job, size, now).await?;
            Ok((tx, done))
        })
        .await
    }

    async fn cancel(&self, event: EventRef, now: Millis) -> Result<Option<Cancellation>, StoreError> {
        let event = &event;
        self.transaction(|mut tx| async move {
            let done = admin::cancel(&mut tx, event, now).await?;
            Ok((tx, done))
        })
        .await
    }

    async fn erase_payload(&self, event: EventRef, now: Millis) -> Result<Option<(EventId, Erasure)>, StoreError> {
        let event = &event;
        self.transaction(|mut tx| async move {
            let done = admin::erase_payload(&mut tx, event, now).await?;
            Ok((tx, done))
        })
        .await
    }

    async fn erase_finished_payloads(&self, before: Millis, limit: usize, now: Millis) -> Result<usize, StoreError> {
        admin::erase_finished_payloads(&self.pool, before, limit, now).await
    }

    async fn release(&self, owner: &str, now: Millis) -> Result<usize, StoreError> {
        let n = self.return_in_flight(InFlight::Owned(owner), now).await?;
        hosts::forget(&self.pool, &self.host_id).await?;
        Ok(n)
    }

    async fn recover_orphans(&self, now: Millis) -> Result<usize, StoreError> {
        self.return_in_flight(InFlight::All, now).await
    }

    async fn sync_paused(&self, live: Vec<TargetName>) -> Result<(usize, usize), StoreError> {
        let live: Vec<String> = live.iter().map(|t| t.to_string()).collect();
        let (live, host) = (&live, self.host_id.as_str());
        self.transaction(|mut tx| async move {
            let changed = admin::sync_paused(&mut tx, host, live, now_ms()).await?;
            Ok((tx, changed))
        })
        .await
    }

    async fn version_attempts(&self) -> Result<VersionAttempts, StoreError> {
        queries::version_attempts(&self.pool).await
    }

    async fn next_due(&self, target: &TargetName) -> Result<Option<Millis>, StoreError> {
        queries::next_due(&self.pool, target).await
    }

    async fn event(&self, id: EventId) -> Result<Option<EventDetail>, StoreError> {
        self.transaction(|mut tx| async move {
            let detail = queries::event(&mut tx, id).await?;
            Ok((tx, detail))
        })
        .await
    }

    async fn search_events(&self, filter: EventFilter, limit: usize) -> Result<Vec<EventSummary>, StoreError> {
        queries::search_events(&self.pool, &filter, limit).await
    }

    /// The write only: the database server's disk is not this host's to measure.
    async fn probe_write(&self, now: Millis) -> Result<(), StoreError> {
        sqlx::query(sql!("probe_write")).bind(now).execute(&self.pool).await?;
        Ok(())
    }

    async fn status_counts(&self) -> Result<StatusCounts, StoreError> {
        queries::status_counts(&self.pool).await
    }

    async fn hold_target(&self, target: &TargetName, reason: &str, now: Millis) -> Result<usize, StoreError> {
        admin::hold_target(&self.pool, target, reason, now).await
    }

    async fn prune_finished(&self, before: Millis, limit: usize) -> Result<usize, StoreError> {
        self.transaction(|mut tx| async move {
            let n = admin::prune_finished(&mut tx, before, limit).await?;
            Ok((tx, n))
        })
        .await
    }

    async fn prune_idempotency_keys(&self, before: Millis, limit: usize) -> Result<usize, StoreError> {
        admin::prune_idempotency_keys(&self.pool, before, limit).await
    }

    async fn prune_failed(&self, filter: FailedFilter, limit: usize) -> Result<usize, StoreError> {
        let filter = &filter;
        self.transaction(|mut tx| async move {
            let n = admin::prune_failed(&mut tx, filter, limit).await?;
            Ok((tx, n))
        })
        .await
    }

    async fn oldest_due(&self, now: Millis) -> Result<BTreeMap<String, Millis>, StoreError> {
        queries::oldest_due(&self.pool, now).await
    }

    async fn backlog_counts(&self) -> Result<BTreeMap<String, u64>, StoreError> {
        queries::backlog_counts(&self.pool).await
    }

    fn is_shared(&self) -> bool {
        true
    }

    async fn take_tokens(&self, target: &TargetName, rate: f64, want: usize) -> Result<Option<TokenGrant>, StoreError> {
        self.transaction(|mut tx| async move {
            let grant = rate::take(&mut tx, target, rate, want).await?;
            Ok((tx, grant))
        })
        .await
        .map(Some)
    }

    async fn give_back_tokens(&self, target: &TargetName, rate: f64, n: usize) -> Result<(), StoreError> {
        rate::give_back(&self.pool, target, rate, n).await
    }

    async fn forward_wakeups(&self, to: crate::store::Wakeups, stop: tokio_util::sync::CancellationToken) {
        wakeups::forward(&self.pool, &to, &stop).await
    }
}

#[cfg(test)]
mod redaction_tests {
    use super::redact;

    #[test]
    fn passwords_are_redacted() {
        assert_eq!(
            redact("postgres://app:s3cret@db.internal:5432/outbox"),
            "postgres://app:***@db.internal:5432/outbox"
        );
        assert_eq!(redact("postgres://app@db/outbox"), "postgres://app@db/outbox");
        assert_eq!(redact("postgres://db/outbox"), "postgres://db/outbox");
        assert_eq!(
            redact("postgres://u:p@ss@db/x?sslmode=require"),
            "postgres://u:***@db/x?sslmode=require"
        );
    }
}
