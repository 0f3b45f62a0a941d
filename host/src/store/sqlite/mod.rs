//! The embedded store: one SQLite file in WAL mode. rusqlite never runs on an async thread:
//! every call goes through `spawn_blocking` onto a connection guarded by a std mutex and a
//! gate (one connection for every write, one for reads, which WAL lets run side by side).
//! This module owns the connections and the one way a transaction is run on them
//! ([`SqliteStore::write_tx`], [`SqliteStore::read`]); the operations live in one module per
//! concern and their SQL in `sql/`, the schema in `migrations/`.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use rusqlite::{Connection, Transaction, TransactionBehavior};

use super::history::InFlight;
use super::replay_jobs::{NewReplayJob, ReplayChunk, ReplayJob};
use super::{
    Cancellation, ClaimRequest, Claimed, Erasure, EventDetail, EventFilter, EventRef, EventSummary, FailedDelivery,
    FailedFilter, Ingested, MIN_FREE_BYTES, NewEvent, SettleReport, Settlement, StatusCounts, Store, StoreError,
    VersionAttempts,
};
use crate::domain::{EventId, Millis, TargetName};

mod admin;
mod claim;
mod filters;
mod ingest;
mod leases;
mod queries;
mod replay_jobs;
mod schema;
mod settle;

pub(crate) use schema::stable_plans;

/// A connection and the gate that lets one call at a time use it.
#[derive(Clone)]
struct Gated {
    conn: Arc<Mutex<Connection>>,
    gate: Arc<tokio::sync::Semaphore>,
}

impl Gated {
    fn new(conn: Connection) -> Self {
        Self {
            conn: Arc::new(Mutex::new(conn)),
            gate: Arc::new(tokio::sync::Semaphore::new(1)),
        }
    }
}

/// The embedded SQLite store.
#[derive(Clone)]
pub struct SqliteStore {
    /// Every write: ingests, claims, settles. One connection, so that its page cache lives on
    /// from one transaction to the next: a connection that finds the database changed by
    /// another since its last transaction starts again from an empty cache, and claims on a
    /// connection of their own re-read every page they touched after each settle (a
    /// `pread` per delivery in the drain).
    writer: Gated,
    reader: Gated,
    ingests: Arc<ingest::IngestGroup>,
    /// The exclusive `serve` lock, held for this store's life when taken.
    _lock: Option<Arc<File>>,
    /// The database file, whose filesystem's free space [`Store::probe_write`] checks.
    path: PathBuf,
}

impl std::fmt::Debug for SqliteStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqliteStore").finish_non_exhaustive()
    }
}

/// How `synchronous` a transaction's commit is: a setting of the connection, which each
/// transaction on the writer sets before it begins (claims `Normal`, everything else `Full`).
#[derive(Debug, Clone, Copy)]
enum Synchronous {
    /// The commit waits for the WAL to reach the disk.
    Full,
    /// The commit does not wait; the next `Full` commit flushes it with everything before it.
    Normal,
}

impl Synchronous {
    fn pragma(self) -> &'static str {
        match self {
            Synchronous::Full => "PRAGMA synchronous = FULL",
            Synchronous::Normal => "PRAGMA synchronous = NORMAL",
        }
    }
}

fn set_synchronous(conn: &Connection, level: Synchronous) -> Result<(), StoreError> {
    conn.prepare_cached(level.pragma())?.execute([])?;
    Ok(())
}

/// Begins a write transaction on the writer: `synchronous` set, and `IMMEDIATE`, so that it
/// holds the database's write lock from the start instead of failing to upgrade later.
fn begin_write(conn: &mut Connection, level: Synchronous) -> Result<Transaction<'_>, StoreError> {
    set_synchronous(conn, level)?;
    Ok(conn.transaction_with_behavior(TransactionBehavior::Immediate)?)
}

/// Fails with [`StoreError::DiskFull`] when the filesystem holding `path` has fewer than
/// [`MIN_FREE_BYTES`] available to this process.
#[cfg(unix)]
fn free_space(path: &Path) -> Result<(), StoreError> {
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let stat = nix::sys::statvfs::statvfs(dir).map_err(|e| StoreError::Open {
        path: dir.display().to_string(),
        source: e.into(),
    })?;
    #[allow(clippy::useless_conversion)] // u64 on Linux, narrower on some other systems
    let free = u64::from(stat.blocks_available()).saturating_mul(u64::from(stat.fragment_size()));
    if free < MIN_FREE_BYTES {
        return Err(StoreError::DiskFull {
            path: path.display().to_string(),
            free,
        });
    }
    Ok(())
}

/// Elsewhere only the write probe tells.
#[cfg(not(unix))]
fn free_space(_path: &Path) -> Result<(), StoreError> {
    Ok(())
}

impl SqliteStore {
    /// Opens (creating and migrating) the database at `path` for a client such as the CLI,
    /// which may run beside a `serve`.
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        Self::open_inner(path, false)
    }

    /// Opens the database for the one `serve` process that owns it: fails if another holds it.
    pub fn open_exclusive(path: &Path) -> Result<Self, StoreError> {
        Self::open_inner(path, true)
    }

    fn open_inner(path: &Path, exclusive: bool) -> Result<Self, StoreError> {
        let opened = schema::open(path, exclusive)?;
        Ok(Self {
            writer: Gated::new(opened.writer),
            reader: Gated::new(opened.reader),
            ingests: Arc::default(),
            _lock: opened.lock.map(Arc::new),
            path: path.to_owned(),
        })
    }

    async fn run<R, F>(gated: &Gated, f: F) -> Result<R, StoreError>
    where
        R: Send + 'static,
        F: FnOnce(&mut Connection) -> Result<R, StoreError> + Send + 'static,
    {
        // Callers queue here, asynchronously, rather than each parking a blocking thread on
        // the mutex: at most one blocking thread per connection.
        let permit = Arc::clone(&gated.gate)
            .acquire_owned()
            .await
            .map_err(|e| StoreError::Task(e.to_string()))?;
        let conn = Arc::clone(&gated.conn);
        tokio::task::spawn_blocking(move || {
            let _permit = permit;
            // A poisoned mutex only means another call panicked mid-way; SQLite rolled its
            // transaction back, so the connection is still sound.
            let mut guard = conn.lock().unwrap_or_else(|e| e.into_inner());
            f(&mut guard)
        })
        .await
        .map_err(|e| StoreError::Task(e.to_string()))?
    }

    /// Runs `f` in one write transaction on the writer, committed as `level` says. An error
    /// rolls it back.
    async fn write_tx<R, F>(&self, level: Synchronous, f: F) -> Result<R, StoreError>
    where
        R: Send + 'static,
        F: FnOnce(&Transaction<'_>) -> Result<R, StoreError> + Send + 'static,
    {
        Self::run(&self.writer, move |conn| {
            let tx = begin_write(conn, level)?;
            let out = f(&tx)?;
            tx.commit()?;
            Ok(out)
        })
        .await
    }

    /// Runs `f` in one read transaction (one snapshot) on the reader.
    async fn read<R, F>(&self, f: F) -> Result<R, StoreError>
    where
        R: Send + 'static,
        F: FnOnce(&Transaction<'_>) -> Result<R, StoreError> + Send + 'static,
    {
        Self::run(&self.reader, move |conn| {
            let tx = conn.transaction()?;
            let out = f(&tx)?;
            tx.commit()?;
            Ok(out)
        })
        .await
    }
}

#[async_trait]
impl Store for SqliteStore {
    async fn ingest(&self, events: Vec<NewEvent>, now: Millis) -> Result<Vec<Ingested>, StoreError> {
        ingest::ingest(self, events, now).await
    }

    async fn claim(&self, request: ClaimRequest) -> Result<Vec<Claimed>, StoreError> {
        // A claim's commit is not flushed to disk by itself: the next flushed commit (a
        // settle, an ingest) makes it durable with everything before it. Losing a claim to
        // power loss is harmless: the delivery is pending again, as if it had never been
        // claimed, and at-least-once delivery already allows the repeat.
        self.write_tx(Synchronous::Normal, move |tx| claim::claim(tx, &request))
            .await
    }

    async fn settle(&self, owner: &str, batch: Vec<Settlement>) -> Result<SettleReport, StoreError> {
        let owner = owner.to_owned();
        self.write_tx(Synchronous::Full, move |tx| settle::settle(tx, &owner, batch))
            .await
    }

    async fn unclaim(&self, owner: &str, claims: Vec<(i64, u32)>, until: Option<Millis>) -> Result<usize, StoreError> {
        let owner = owner.to_owned();
        self.write_tx(Synchronous::Full, move |tx| leases::unclaim(tx, &owner, &claims, until))
            .await
    }

    async fn extend_leases(&self, owner: &str, now: Millis, lease_ms: Millis) -> Result<usize, StoreError> {
        let owner = owner.to_owned();
        self.write_tx(Synchronous::Full, move |tx| {
            leases::extend(tx, &owner, now, now + lease_ms)
        })
        .await
    }

    async fn sweep_expired(&self, now: Millis) -> Result<usize, StoreError> {
        self.write_tx(Synchronous::Full, move |tx| {
            leases::return_in_flight(tx, InFlight::Expired(now), now)
        })
        .await
    }

    async fn set_target_paused(&self, target: &TargetName, paused: bool, now: Millis) -> Result<bool, StoreError> {
        let target = target.clone();
        self.write_tx(Synchronous::Full, move |tx| {
            admin::set_target_paused(tx, &target, paused, now)
        })
        .await
    }

    async fn paused_targets(&self) -> Result<Vec<String>, StoreError> {
        self.read(queries::paused_targets).await
    }

    async fn list_failed(
        &self,
        filter: FailedFilter,
        after: i64,
        limit: usize,
    ) -> Result<Vec<FailedDelivery>, StoreError> {
        self.read(move |tx| queries::list_failed(tx, &filter, after, limit))
            .await
    }

    async fn count_failed(&self, filter: FailedFilter) -> Result<u64, StoreError> {
        self.read(move |tx| queries::count_failed(tx, &filter)).await
    }

    async fn replay(&self, filter: FailedFilter, limit: usize, now: Millis) -> Result<usize, StoreError> {
        self.write_tx(Synchronous::Full, move |tx| admin::replay(tx, &filter, limit, now))
            .await
    }

    async fn create_replay_job(&self, job: NewReplayJob, now: Millis) -> Result<ReplayJob, StoreError> {
        self.write_tx(Synchronous::Full, move |tx| replay_jobs::create(tx, &job, now))
            .await
    }

    async fn replay_job(&self, id: i64) -> Result<Option<ReplayJob>, StoreError> {
        self.read(move |tx| replay_jobs::get(tx, id)).await
    }

    async fn replay_jobs(&self, limit: usize) -> Result<Vec<ReplayJob>, StoreError> {
        self.read(move |tx| replay_jobs::list(tx, limit)).await
    }

    async fn cancel_replay_job(&self, id: i64, now: Millis) -> Result<Option<ReplayJob>, StoreError> {
        self.write_tx(Synchronous::Full, move |tx| replay_jobs::cancel(tx, id, now))
            .await
    }

    async fn replay_chunk(
        &self,
        job: Option<i64>,
        size: usize,
        now: Millis,
    ) -> Result<Option<ReplayChunk>, StoreError> {
        self.write_tx(Synchronous::Full, move |tx| replay_jobs::chunk(tx, job, size, now))
            .await
    }

    async fn cancel(&self, event: EventRef, now: Millis) -> Result<Option<Cancellation>, StoreError> {
        self.write_tx(Synchronous::Full, move |tx| admin::cancel(tx, &event, now))
            .await
    }

    async fn erase_payload(&self, event: EventRef, now: Millis) -> Result<Option<(EventId, Erasure)>, StoreError> {
        self.write_tx(Synchronous::Full, move |tx| admin::erase_payload(tx, &event, now))
            .await
    }

    async fn erase_finished_payloads(&self, before: Millis, limit: usize, now: Millis) -> Result<usize, StoreError> {
        self.write_tx(Synchronous::Full, move |tx| {
            admin::erase_finished_payloads(tx, before, limit, now)
        })
        .await
    }

    async fn release(&self, owner: &str, now: Millis) -> Result<usize, StoreError> {
        let owner = owner.to_owned();
        self.write_tx(Synchronous::Full, move |tx| {
            leases::return_in_flight(tx, InFlight::Owned(&owner), now)
        })
        .await
    }

    async fn recover_orphans(&self, now: Millis) -> Result<usize, StoreError> {
        self.write_tx(Synchronous::Full, move |tx| {
            leases::return_in_flight(tx, InFlight::All, now)
        })
        .await
    }

    async fn sync_paused(&self, live: Vec<TargetName>) -> Result<(usize, usize), StoreError> {
        self.write_tx(Synchronous::Full, move |tx| admin::sync_paused(tx, &live))
            .await
    }

    async fn version_attempts(&self) -> Result<VersionAttempts, StoreError> {
        self.read(queries::version_attempts).await
    }

    async fn next_due(&self, target: &TargetName) -> Result<Option<Millis>, StoreError> {
        let target = target.clone();
        self.read(move |tx| queries::next_due(tx, &target)).await
    }

    async fn event(&self, id: EventId) -> Result<Option<EventDetail>, StoreError> {
        self.read(move |tx| queries::event(tx, id)).await
    }

    async fn search_events(&self, filter: EventFilter, limit: usize) -> Result<Vec<EventSummary>, StoreError> {
        self.read(move |tx| queries::search_events(tx, &filter, limit)).await
    }

    async fn probe_write(&self, now: Millis) -> Result<(), StoreError> {
        self.write_tx(Synchronous::Full, move |tx| {
            tx.prepare_cached(sql!("probe_write"))?.execute([now])?;
            Ok(())
        })
        .await?;
        let path = self.path.clone();
        tokio::task::spawn_blocking(move || free_space(&path))
            .await
            .map_err(|e| StoreError::Task(e.to_string()))?
    }

    async fn status_counts(&self) -> Result<StatusCounts, StoreError> {
        self.read(queries::status_counts).await
    }

    async fn hold_target(&self, target: &TargetName, reason: &str, now: Millis) -> Result<usize, StoreError> {
        let (target, reason) = (target.clone(), reason.to_owned());
        self.write_tx(Synchronous::Full, move |tx| {
            admin::hold_target(tx, &target, &reason, now)
        })
        .await
    }

    async fn prune_finished(&self, before: Millis, limit: usize) -> Result<usize, StoreError> {
        self.write_tx(Synchronous::Full, move |tx| admin::prune_finished(tx, before, limit))
            .await
    }

    async fn prune_idempotency_keys(&self, before: Millis, limit: usize) -> Result<usize, StoreError> {
        self.write_tx(Synchronous::Full, move |tx| {
            admin::prune_idempotency_keys(tx, before, limit)
        })
        .await
    }

    async fn prune_failed(&self, filter: FailedFilter, limit: usize) -> Result<usize, StoreError> {
        self.write_tx(Synchronous::Full, move |tx| admin::prune_failed(tx, &filter, limit))
            .await
    }

    async fn oldest_due(&self, now: Millis) -> Result<std::collections::BTreeMap<String, Millis>, StoreError> {
        self.read(move |tx| queries::oldest_due(tx, now)).await
    }
}
