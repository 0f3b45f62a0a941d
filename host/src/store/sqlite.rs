//! The embedded store: one SQLite file in WAL mode, schema migrations by `PRAGMA
//! user_version`. rusqlite never runs on an async thread: every call goes through
//! `spawn_blocking` onto a connection guarded by a std mutex (one for writes, one for reads,
//! which WAL lets run side by side). A `serve` process also holds an exclusive lock file
//! beside the database, so it knows that every in-flight delivery it finds at start-up was
//! left by a crashed predecessor.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use rusqlite::{Connection, OptionalExtension, TransactionBehavior, params};

use super::group_commit::{GroupCommit, Waiter};
use super::{
    AttemptRecord, Claimed, DeliveryDetail, EventDetail, FailedDelivery, FailedFilter, Ingested, NewEvent,
    SettleReport, Settlement, StatusCounts, Store, StoreError, StoredEvent, VersionAttempts,
};
use crate::domain::{AttemptOutcome, DeliveryStatus, EventId, Millis, TargetName};

/// Schema migrations, applied in order; `PRAGMA user_version` counts the applied ones.
const MIGRATIONS: &[&str] = &[
    r#"
CREATE TABLE events (
    id              TEXT PRIMARY KEY,
    type            TEXT NOT NULL,
    payload         TEXT NOT NULL,
    headers         TEXT NOT NULL,
    idempotency_key TEXT,
    ordering_key    TEXT,
    created_at      INTEGER NOT NULL
) STRICT;

-- The producer idempotency ledger: a key resolves to the first event accepted with it.
CREATE TABLE idempotency_keys (
    key        TEXT PRIMARY KEY,
    event_id   TEXT NOT NULL REFERENCES events(id),
    created_at INTEGER NOT NULL
) STRICT;

CREATE TABLE deliveries (
    id               INTEGER PRIMARY KEY,
    event_id         TEXT NOT NULL REFERENCES events(id),
    target           TEXT NOT NULL,
    status           TEXT NOT NULL
                     CHECK (status IN ('pending', 'in_flight', 'delivered', 'dead', 'discarded', 'paused')),
    -- attempts counts towards the retry budget (a replay resets it); attempt_seq numbers
    -- the history and never goes back.
    attempts         INTEGER NOT NULL DEFAULT 0,
    attempt_seq      INTEGER NOT NULL DEFAULT 0,
    next_attempt_at  INTEGER NOT NULL,
    lease_owner      TEXT,
    lease_expires_at INTEGER,
    last_error       TEXT,
    delivered_at     INTEGER,
    ordering_key     TEXT,
    updated_at       INTEGER NOT NULL,
    UNIQUE (event_id, target)
) STRICT;
CREATE INDEX deliveries_due ON deliveries (target, status, next_attempt_at);
CREATE INDEX deliveries_lease ON deliveries (lease_owner) WHERE lease_owner IS NOT NULL;
CREATE INDEX deliveries_expiry ON deliveries (lease_expires_at) WHERE status = 'in_flight';
CREATE INDEX deliveries_order ON deliveries (target, ordering_key, id) WHERE ordering_key IS NOT NULL;
CREATE INDEX deliveries_failed ON deliveries (status, updated_at) WHERE status IN ('dead', 'discarded');

CREATE TABLE attempts (
    delivery_id INTEGER NOT NULL REFERENCES deliveries(id),
    n           INTEGER NOT NULL,
    started_at  INTEGER NOT NULL,
    duration_ms INTEGER,
    outcome     TEXT NOT NULL CHECK (outcome IN ('running', 'delivered', 'retry', 'permanent', 'abandoned')),
    error       TEXT,
    plugin_hash TEXT,
    PRIMARY KEY (delivery_id, n)
) STRICT;

-- Attempts per plugin version of each target, kept up by settle.
CREATE TABLE version_attempts (
    target      TEXT NOT NULL,
    plugin_hash TEXT NOT NULL,
    attempts    INTEGER NOT NULL,
    PRIMARY KEY (target, plugin_hash)
) STRICT;

-- Targets paused by hand: their lanes claim nothing.
CREATE TABLE target_state (
    target     TEXT PRIMARY KEY,
    paused     INTEGER NOT NULL,
    updated_at INTEGER NOT NULL
) STRICT;
"#,
    r#"
-- Retention: events are deleted by age, and the idempotency ledger keeps its keys for a
-- window of its own, so a key may outlive its event: the ledger no longer references events.
CREATE TABLE idempotency_keys_v2 (
    key        TEXT PRIMARY KEY,
    event_id   TEXT NOT NULL,
    created_at INTEGER NOT NULL
) STRICT;
INSERT INTO idempotency_keys_v2 (key, event_id, created_at)
    SELECT key, event_id, created_at FROM idempotency_keys;
DROP TABLE idempotency_keys;
ALTER TABLE idempotency_keys_v2 RENAME TO idempotency_keys;
CREATE INDEX idempotency_keys_age ON idempotency_keys (created_at);
CREATE INDEX events_age ON events (created_at);
"#,
    r#"
-- Fewer b-tree writes per delivery. Every query by lease owner also says
-- `status = 'in_flight'`, which `deliveries_expiry` covers: the owner index only cost an
-- insert at each claim and a delete at each settle. The history is keyed by (delivery, n)
-- and read only by that key: without a rowid it is one b-tree instead of a table and an
-- index, so writing an attempt touches one.
DROP INDEX deliveries_lease;
CREATE TABLE attempts_v2 (
    delivery_id INTEGER NOT NULL REFERENCES deliveries(id),
    n           INTEGER NOT NULL,
    started_at  INTEGER NOT NULL,
    duration_ms INTEGER,
    outcome     TEXT NOT NULL CHECK (outcome IN ('running', 'delivered', 'retry', 'permanent', 'abandoned')),
    error       TEXT,
    plugin_hash TEXT,
    PRIMARY KEY (delivery_id, n)
) STRICT, WITHOUT ROWID;
INSERT INTO attempts_v2 (delivery_id, n, started_at, duration_ms, outcome, error, plugin_hash)
    SELECT delivery_id, n, started_at, duration_ms, outcome, error, plugin_hash FROM attempts;
DROP TABLE attempts;
ALTER TABLE attempts_v2 RENAME TO attempts;
"#,
];

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

/// One ingest request (its events and their acceptance time) and its answer.
type IngestRequest = (Vec<NewEvent>, Millis);
type IngestAnswer = Result<Vec<Ingested>, StoreError>;
/// Concurrent ingests, written together (see [`GroupCommit`]).
type IngestGroup = GroupCommit<IngestRequest, IngestAnswer>;

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
    ingests: Arc<IngestGroup>,
    /// The exclusive `serve` lock, held for this store's life when taken.
    _lock: Option<Arc<File>>,
}

impl std::fmt::Debug for SqliteStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqliteStore").finish_non_exhaustive()
    }
}

fn open_connection(path: &Path) -> Result<Connection, StoreError> {
    let conn = Connection::open(path)?;
    conn.pragma_update(None, "journal_mode", "WAL")?;
    // FULL: an acknowledged ingest survives power loss, not only a process crash.
    set_synchronous(&conn, Synchronous::Full)?;
    conn.pragma_update(None, "foreign_keys", "ON")?;
    conn.busy_timeout(std::time::Duration::from_secs(10))?;
    stable_plans(&conn)?;
    Ok(conn)
}

/// Turns on SQLite's query planner stability guarantee. Without it, a cached statement
/// whose plan could depend on a bound value (a `LIMIT ?`, since SQLite 3.50) is compiled
/// again whenever that value changes: every claim of a different size re-parsed its query,
/// about a fifth of the claim's cost in a profile of the drain.
pub(crate) fn stable_plans(conn: &Connection) -> Result<(), rusqlite::Error> {
    conn.set_db_config(rusqlite::config::DbConfig::SQLITE_DBCONFIG_ENABLE_QPSG, true)?;
    Ok(())
}

fn migrate(conn: &mut Connection) -> Result<(), StoreError> {
    let version: i64 = conn.pragma_query_value(None, "user_version", |r| r.get(0))?;
    let supported = MIGRATIONS.len() as i64;
    if version > supported {
        return Err(StoreError::TooNew {
            found: version,
            supported,
        });
    }
    for (i, sql) in MIGRATIONS.iter().enumerate().skip(version as usize) {
        let tx = conn.transaction_with_behavior(TransactionBehavior::Exclusive)?;
        tx.execute_batch(sql)?;
        tx.pragma_update(None, "user_version", (i + 1) as i64)?;
        tx.commit()?;
    }
    Ok(())
}

fn lock_path(db: &Path) -> PathBuf {
    let mut p = db.as_os_str().to_owned();
    p.push(".lock");
    PathBuf::from(p)
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
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|source| StoreError::Open {
                path: path.display().to_string(),
                source,
            })?;
        }
        let lock = if exclusive {
            let lp = lock_path(path);
            let file = File::options()
                .create(true)
                .truncate(false)
                .write(true)
                .open(&lp)
                .map_err(|source| StoreError::Open {
                    path: lp.display().to_string(),
                    source,
                })?;
            file.try_lock().map_err(|_| StoreError::Locked {
                path: path.display().to_string(),
                lock: lp.display().to_string(),
            })?;
            Some(Arc::new(file))
        } else {
            None
        };
        let mut writer = open_connection(path)?;
        migrate(&mut writer)?;
        let reader = open_connection(path)?;
        Ok(Self {
            writer: Gated::new(writer),
            reader: Gated::new(reader),
            ingests: Arc::default(),
            _lock: lock,
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

    async fn write<R, F>(&self, f: F) -> Result<R, StoreError>
    where
        R: Send + 'static,
        F: FnOnce(&mut Connection) -> Result<R, StoreError> + Send + 'static,
    {
        Self::run(&self.writer, move |conn| {
            set_synchronous(conn, Synchronous::Full)?;
            f(conn)
        })
        .await
    }

    async fn read<R, F>(&self, f: F) -> Result<R, StoreError>
    where
        R: Send + 'static,
        F: FnOnce(&mut Connection) -> Result<R, StoreError> + Send + 'static,
    {
        Self::run(&self.reader, f).await
    }
}

fn parse<T: std::str::FromStr>(s: String) -> Result<T, StoreError>
where
    T::Err: std::fmt::Display,
{
    s.parse().map_err(|e: T::Err| StoreError::Corrupt(e.to_string()))
}

fn load_event(conn: &Connection, id: &str) -> Result<Option<StoredEvent>, StoreError> {
    let row = conn
        .prepare_cached(
            "SELECT id, type, payload, headers, idempotency_key, ordering_key, created_at FROM events WHERE id = ?1",
        )?
        .query_row([id], |r| {
            Ok((
                r.get::<_, String>(0)?,
                r.get::<_, String>(1)?,
                r.get::<_, String>(2)?,
                r.get::<_, String>(3)?,
                r.get::<_, Option<String>>(4)?,
                r.get::<_, Option<String>>(5)?,
                r.get::<_, i64>(6)?,
            ))
        })
        .optional()?;
    row.map(
        |(id, event_type, payload, headers, idempotency_key, ordering_key, created_at)| {
            Ok(StoredEvent {
                id: parse(id)?,
                event_type,
                payload,
                headers: serde_json::from_str(&headers).map_err(|e| StoreError::Corrupt(e.to_string()))?,
                idempotency_key,
                ordering_key,
                created_at,
            })
        },
    )
    .transpose()
}

/// Writes events, their idempotency keys and one pending delivery per target, inside the
/// caller's transaction. Events with a known idempotency key write nothing.
fn insert_events(tx: &Connection, events: Vec<NewEvent>, now: Millis) -> Result<Vec<Ingested>, StoreError> {
    let mut out = Vec::with_capacity(events.len());
    let mut find_key = tx.prepare_cached("SELECT event_id FROM idempotency_keys WHERE key = ?1")?;
    let mut insert_event = tx.prepare_cached(
        "INSERT INTO events (id, type, payload, headers, idempotency_key, ordering_key, created_at)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
    )?;
    let mut insert_key =
        tx.prepare_cached("INSERT INTO idempotency_keys (key, event_id, created_at) VALUES (?1, ?2, ?3)")?;
    let mut insert_delivery = tx.prepare_cached(
        "INSERT INTO deliveries (event_id, target, status, next_attempt_at, ordering_key, updated_at)
         VALUES (?1, ?2, ?3, ?4, ?5, ?4)",
    )?;
    for e in events {
        if let Some(key) = &e.idempotency_key {
            let known: Option<String> = find_key.query_row([key.as_str()], |r| r.get(0)).optional()?;
            if let Some(first) = known {
                out.push(Ingested {
                    id: parse(first)?,
                    duplicate: true,
                });
                continue;
            }
        }
        let id = e.id.to_string();
        let headers = serde_json::to_string(&e.headers).map_err(|e| StoreError::Corrupt(e.to_string()))?;
        let key = e.idempotency_key.as_ref().map(|k| k.as_str());
        insert_event.execute(params![
            id,
            e.event_type.as_str(),
            e.payload,
            headers,
            key,
            e.ordering_key,
            now
        ])?;
        if let Some(key) = key {
            insert_key.execute(params![key, id, now])?;
        }
        for target in &e.targets {
            insert_delivery.execute(params![
                id,
                target.as_str(),
                DeliveryStatus::Pending.as_str(),
                now,
                e.ordering_key
            ])?;
        }
        out.push(Ingested {
            id: e.id,
            duplicate: false,
        });
    }
    Ok(out)
}

/// Writes a group of ingest requests in one transaction, each inside its own savepoint so
/// that one failing request (all or nothing, as alone) does not undo the others, and answers
/// every request once the transaction has committed.
fn ingest_group(conn: &mut Connection, group: Vec<Waiter<IngestRequest, IngestAnswer>>) {
    // A `202` means on disk: the commit waits for the fsync.
    let began = set_synchronous(conn, Synchronous::Full)
        .and_then(|()| Ok(conn.transaction_with_behavior(TransactionBehavior::Immediate)?));
    let mut tx = match began {
        Ok(tx) => tx,
        Err(e) => {
            let message = e.to_string();
            let mut first = Some(e);
            for w in group {
                let err = first.take().unwrap_or_else(|| StoreError::Task(message.clone()));
                w.answer(Err(err));
            }
            return;
        }
    };
    let mut done = Vec::with_capacity(group.len());
    for mut w in group {
        let (events, now) = std::mem::take(&mut w.request);
        let result = tx.savepoint().map_err(StoreError::from).and_then(|mut sp| {
            sp.set_drop_behavior(rusqlite::DropBehavior::Rollback);
            let out = insert_events(&sp, events, now)?;
            sp.commit()?;
            Ok(out)
        });
        done.push((w, result));
    }
    match tx.commit() {
        Ok(()) => done.into_iter().for_each(|(w, r)| w.answer(r)),
        Err(e) => {
            let message = format!("commit failed: {e}");
            for (w, r) in done {
                w.answer(r.and_then(|_| Err(StoreError::Task(message.clone()))));
            }
        }
    }
}

/// Writes the history row of the running attempt of each in-flight delivery matched by
/// `where_clause` (which may use the named parameters in `bind`) as abandoned, with `why` as its
/// error. The attempt started when the delivery was claimed (`updated_at`); a `running` row left
/// by schema 3 or older becomes abandoned, any other row is kept.
fn abandon_running(
    tx: &Connection,
    where_clause: &str,
    bind: &[(&str, &dyn rusqlite::ToSql)],
    why: &str,
) -> Result<(), StoreError> {
    let sql = format!(
        "INSERT INTO attempts (delivery_id, n, started_at, outcome, error)
         SELECT id, attempt_seq, updated_at, '{abandoned}', :why FROM deliveries
         WHERE status = '{in_flight}' AND {where_clause}
         ON CONFLICT (delivery_id, n) DO UPDATE SET outcome = excluded.outcome, error = excluded.error
         WHERE outcome = '{running}'",
        abandoned = AttemptOutcome::Abandoned.as_str(),
        running = AttemptOutcome::Running.as_str(),
        in_flight = DeliveryStatus::InFlight.as_str(),
    );
    let mut all = bind.to_vec();
    all.push((":why", &why));
    tx.prepare_cached(&sql)?.execute(all.as_slice())?;
    Ok(())
}

/// Returns in-flight deliveries matched by `where_clause` to pending, due `now`, abandoning
/// their running attempts with `why`.
fn return_in_flight(
    tx: &Connection,
    where_clause: &str,
    bind: &[(&str, &dyn rusqlite::ToSql)],
    now: Millis,
    why: &str,
) -> Result<usize, StoreError> {
    let in_flight = DeliveryStatus::InFlight.as_str();
    abandon_running(tx, where_clause, bind, why)?;
    let clause = format!("status = '{in_flight}' AND {where_clause}");
    let sql = format!(
        "UPDATE deliveries SET status = '{pending}', lease_owner = NULL, lease_expires_at = NULL,
            next_attempt_at = :now, updated_at = :now
         WHERE {clause}",
        pending = DeliveryStatus::Pending.as_str(),
    );
    let mut all = bind.to_vec();
    all.push((":now", &now));
    Ok(tx.prepare_cached(&sql)?.execute(all.as_slice())?)
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

/// One claim transaction (see [`Store::claim`]).
fn claim_in(
    conn: &mut Connection,
    target: &TargetName,
    limit: usize,
    owner: &str,
    now: Millis,
    lease_until: Millis,
    ordered: bool,
) -> Result<Vec<Claimed>, StoreError> {
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    let paused: bool = tx
        .prepare_cached("SELECT paused FROM target_state WHERE target = ?1")?
        .query_row([target.as_str()], |r| r.get::<_, i64>(0))
        .optional()?
        .is_some_and(|p| p != 0);
    if paused {
        return Ok(Vec::new());
    }
    let pending = DeliveryStatus::Pending.as_str();
    let in_flight = DeliveryStatus::InFlight.as_str();
    // Expired leases (rare): the attempt they covered never reported back. One probe
    // of the target's few in-flight rows decides whether to look at them at all.
    let expired: bool = tx
        .prepare_cached(&format!(
            "SELECT EXISTS (SELECT 1 FROM deliveries
             WHERE target = ?1 AND status = '{in_flight}' AND lease_expires_at <= ?2)"
        ))?
        .query_row(params![target.as_str(), now], |r| r.get(0))?;
    if expired {
        abandon_running(
            &tx,
            "target = :target AND lease_expires_at <= :now",
            &[(":target", &target.as_str()), (":now", &now)],
            "lease expired before the attempt reported back",
        )?;
    }
    // For an ordered target, a keyed delivery waits for every earlier one of its key.
    let fifo = if ordered {
        format!(
            "AND (d.ordering_key IS NULL OR NOT EXISTS (
                SELECT 1 FROM deliveries e
                WHERE e.target = d.target AND e.ordering_key = d.ordering_key AND e.id < d.id
                  AND e.status IN ('{pending}', '{in_flight}', '{paused}')))",
            paused = DeliveryStatus::Paused.as_str()
        )
    } else {
        String::new()
    };
    // Expired leases first (rare), then due pending deliveries. Two statements rather
    // than one with an OR, so that each walks the due index in order and stops at the
    // limit instead of sorting every due delivery of the target.
    let mut claimed: Vec<(i64, String, u32, u32)> = Vec::new();
    let expired_due = format!("d.status = '{in_flight}' AND d.lease_expires_at <= ?4");
    let pending_due = format!("d.status = '{pending}' AND d.next_attempt_at <= ?4");
    for due in [expired.then_some(expired_due), Some(pending_due)]
        .into_iter()
        .flatten()
    {
        let left = limit.saturating_sub(claimed.len());
        if left == 0 {
            break;
        }
        let rows = tx
            .prepare_cached(&format!(
                "UPDATE deliveries
                 SET status = '{in_flight}', lease_owner = ?2, lease_expires_at = ?3, attempts = attempts + 1,
                     attempt_seq = attempt_seq + 1, updated_at = ?4
                 WHERE id IN (
                     SELECT d.id FROM deliveries d
                     WHERE d.target = ?1 AND {due}
                     {fifo}
                     ORDER BY d.next_attempt_at, d.id
                     LIMIT ?5)
                 RETURNING id, event_id, attempts, attempt_seq"
            ))?
            .query_map(params![target.as_str(), owner, lease_until, now, left as i64], |r| {
                Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?))
            })?
            .collect::<Result<Vec<_>, _>>()?;
        claimed.extend(rows);
    }
    // No history row yet: a running attempt is the in-flight delivery itself (its
    // `attempt_seq`, started at its `updated_at`), and its row is written once, when it
    // settles or is abandoned.
    let mut out = Vec::with_capacity(claimed.len());
    for (delivery_id, event_id, attempt, seq) in claimed {
        let event = load_event(&tx, &event_id)?
            .ok_or_else(|| StoreError::Corrupt(format!("delivery {delivery_id} has no event {event_id}")))?;
        out.push(Claimed {
            delivery_id,
            target: target.clone(),
            attempt,
            seq,
            event,
        });
    }
    out.sort_by_key(|c| c.delivery_id);
    tx.commit()?;
    Ok(out)
}

/// Deletes the events listed in the temporary table `prune_events`, with their deliveries
/// and attempt history, and empties the list.
fn delete_pruned_events(tx: &Connection) -> Result<(), StoreError> {
    tx.execute(
        "DELETE FROM attempts WHERE delivery_id IN
             (SELECT d.id FROM deliveries d JOIN prune_events p ON d.event_id = p.id)",
        [],
    )?;
    tx.execute(
        "DELETE FROM deliveries WHERE event_id IN (SELECT id FROM prune_events)",
        [],
    )?;
    tx.execute("DELETE FROM events WHERE id IN (SELECT id FROM prune_events)", [])?;
    tx.execute("DELETE FROM prune_events", [])?;
    Ok(())
}

/// The WHERE clause and parameters of a [`FailedFilter`] over `deliveries d`.
/// Named SQL parameters, owned.
type NamedParams = Vec<(String, Box<dyn rusqlite::ToSql>)>;

fn failed_where(f: &FailedFilter) -> (String, NamedParams) {
    let statuses: Vec<DeliveryStatus> = if f.statuses.is_empty() {
        vec![DeliveryStatus::Dead, DeliveryStatus::Discarded]
    } else {
        f.statuses
            .iter()
            .copied()
            .filter(|s| matches!(s, DeliveryStatus::Dead | DeliveryStatus::Discarded))
            .collect()
    };
    let list = statuses
        .iter()
        .map(|s| format!("'{}'", s.as_str()))
        .collect::<Vec<_>>()
        .join(", ");
    let mut clauses = vec![format!(
        "d.status IN ({})",
        if list.is_empty() { "NULL".into() } else { list }
    )];
    let mut params: NamedParams = Vec::new();
    if let Some(t) = &f.target {
        clauses.push("d.target = :target".into());
        params.push((":target".into(), Box::new(t.to_string())));
    }
    if let Some(t) = &f.event_type {
        clauses.push("d.event_id IN (SELECT id FROM events WHERE type GLOB :type)".into());
        params.push((":type".into(), Box::new(t.clone())));
    }
    if let Some(since) = f.since {
        clauses.push("d.updated_at >= :since".into());
        params.push((":since".into(), Box::new(since)));
    }
    if let Some(until) = f.until {
        clauses.push("d.updated_at < :until".into());
        params.push((":until".into(), Box::new(until)));
    }
    if let Some(text) = &f.error_contains {
        clauses.push("instr(lower(d.last_error), lower(:error)) > 0".into());
        params.push((":error".into(), Box::new(text.clone())));
    }
    if !f.delivery_ids.is_empty() {
        let ids = f
            .delivery_ids
            .iter()
            .map(|i| i.to_string())
            .collect::<Vec<_>>()
            .join(", ");
        clauses.push(format!("d.id IN ({ids})"));
    }
    (clauses.join(" AND "), params)
}

fn bind_refs(params: &[(String, Box<dyn rusqlite::ToSql>)]) -> Vec<(&str, &dyn rusqlite::ToSql)> {
    params.iter().map(|(k, v)| (k.as_str(), v.as_ref())).collect()
}

#[async_trait]
impl Store for SqliteStore {
    async fn ingest(&self, events: Vec<NewEvent>, now: Millis) -> Result<Vec<Ingested>, StoreError> {
        // Concurrent ingests share one transaction and one fsync; each is answered only
        // after that commit, so an acknowledged event is as durable as before.
        let conn = Arc::clone(&self.writer.conn);
        self.ingests
            .submit((events, now), &self.writer.gate, move |permit, group| {
                tokio::task::spawn_blocking(move || {
                    let _permit = permit;
                    let mut guard = conn.lock().unwrap_or_else(|e| e.into_inner());
                    ingest_group(&mut guard, group);
                });
            })
            .await
            .unwrap_or_else(|| Err(StoreError::Task("the ingest was dropped before its commit".into())))
    }

    async fn claim(
        &self,
        target: &TargetName,
        limit: usize,
        owner: &str,
        now: Millis,
        lease_until: Millis,
        ordered: bool,
    ) -> Result<Vec<Claimed>, StoreError> {
        let target = target.clone();
        let owner = owner.to_owned();
        Self::run(&self.writer, move |conn| {
            // A claim's commit is not flushed to disk by itself: the next flushed commit (a
            // settle, an ingest) makes it durable with everything before it. Losing a claim
            // to power loss is harmless: the delivery is pending again, as if it had never been
            // claimed, and at-least-once delivery already allows the repeat.
            // Every other write on this connection sets `Full` again before it starts.
            set_synchronous(conn, Synchronous::Normal)?;
            claim_in(conn, &target, limit, &owner, now, lease_until, ordered)
        })
        .await
    }

    async fn settle(&self, owner: &str, batch: Vec<Settlement>) -> Result<SettleReport, StoreError> {
        let owner = owner.to_owned();
        self.write(move |conn| {
            let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
            let mut report = SettleReport::default();
            let mut emitted = Vec::new();
            {
                let mut update = tx.prepare_cached(&format!(
                    "UPDATE deliveries
                     SET status = ?1, next_attempt_at = ?2, last_error = ?3,
                         delivered_at = CASE WHEN ?1 = '{delivered}' THEN ?4 ELSE delivered_at END,
                         lease_owner = NULL, lease_expires_at = NULL, updated_at = ?4
                     WHERE id = ?5 AND lease_owner = ?6 AND attempt_seq = ?7 AND status = '{in_flight}'",
                    delivered = DeliveryStatus::Delivered.as_str(),
                    in_flight = DeliveryStatus::InFlight.as_str(),
                ))?;
                // The attempt's one history row. A row is already there when a sweep abandoned
                // the attempt (or, from a database of schema 3 or older, as `running`): what the
                // attempt did replaces it.
                let mut record = tx.prepare_cached(
                    "INSERT INTO attempts (delivery_id, n, started_at, duration_ms, outcome, error, plugin_hash)
                     VALUES (?5, ?6, ?7, ?3, ?1, ?2, ?4)
                     ON CONFLICT (delivery_id, n) DO UPDATE SET outcome = excluded.outcome,
                         error = excluded.error, duration_ms = excluded.duration_ms,
                         plugin_hash = excluded.plugin_hash",
                )?;
                // Attempts per (target, plugin version) of this batch: one upsert each.
                let mut versions: Vec<(TargetName, String, i64)> = Vec::new();
                for s in batch {
                    let changed = update.execute(params![
                        s.status.as_str(),
                        s.next_attempt_at,
                        s.last_error,
                        s.finished_at,
                        s.delivery_id,
                        owner,
                        s.seq,
                    ])?;
                    if changed == 0 {
                        report.lost_leases.push(s.delivery_id);
                    } else {
                        emitted.extend(s.emit);
                    }
                    // The attempt happened either way: the history keeps what it did.
                    record.execute(params![
                        s.outcome.as_str(),
                        s.last_error,
                        s.duration_ms as i64,
                        s.plugin_hash,
                        s.delivery_id,
                        s.seq,
                        s.finished_at - s.duration_ms as Millis,
                    ])?;
                    if let Some(hash) = s.plugin_hash {
                        match versions.iter_mut().find(|(t, h, _)| *t == s.target && *h == hash) {
                            Some((_, _, n)) => *n += 1,
                            None => versions.push((s.target, hash, 1)),
                        }
                    }
                }
                let mut count_version = tx.prepare_cached(
                    "INSERT INTO version_attempts (target, plugin_hash, attempts) VALUES (?1, ?2, ?3)
                     ON CONFLICT (target, plugin_hash) DO UPDATE SET attempts = attempts + excluded.attempts",
                )?;
                for (target, hash, n) in versions {
                    count_version.execute(params![target.as_str(), hash, n])?;
                }
            }
            let now = emitted.first().map(|_| crate::domain::now_ms()).unwrap_or_default();
            insert_events(&tx, emitted, now)?;
            tx.commit()?;
            Ok(report)
        })
        .await
    }

    async fn unclaim(&self, owner: &str, claims: Vec<(i64, u32)>) -> Result<usize, StoreError> {
        if claims.is_empty() {
            return Ok(0);
        }
        let owner = owner.to_owned();
        self.write(move |conn| {
            let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
            let mut given_back = 0;
            {
                let mut give_back = tx.prepare_cached(&format!(
                    "UPDATE deliveries
                     SET status = '{pending}', lease_owner = NULL, lease_expires_at = NULL,
                         attempts = attempts - 1, attempt_seq = attempt_seq - 1
                     WHERE id = ?1 AND lease_owner = ?2 AND attempt_seq = ?3 AND status = '{in_flight}'",
                    pending = DeliveryStatus::Pending.as_str(),
                    in_flight = DeliveryStatus::InFlight.as_str(),
                ))?;
                for (id, seq) in claims {
                    given_back += give_back.execute(params![id, owner, seq])?;
                }
            }
            tx.commit()?;
            Ok(given_back)
        })
        .await
    }

    async fn extend_leases(&self, owner: &str, lease_until: Millis) -> Result<usize, StoreError> {
        let owner = owner.to_owned();
        self.write(move |conn| {
            let n = conn
                .prepare_cached(&format!(
                    "UPDATE deliveries SET lease_expires_at = MAX(lease_expires_at, ?1)
                     WHERE lease_owner = ?2 AND status = '{}'",
                    DeliveryStatus::InFlight.as_str()
                ))?
                .execute(params![lease_until, owner])?;
            Ok(n)
        })
        .await
    }

    async fn sweep_expired(&self, now: Millis) -> Result<usize, StoreError> {
        self.write(move |conn| {
            let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
            let n = return_in_flight(
                &tx,
                "lease_expires_at <= :expiry",
                &[(":expiry", &now)],
                now,
                "lease expired: the worker stopped without reporting back",
            )?;
            tx.commit()?;
            Ok(n)
        })
        .await
    }

    async fn release(&self, owner: &str, now: Millis) -> Result<usize, StoreError> {
        let owner = owner.to_owned();
        self.write(move |conn| {
            let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
            let n = return_in_flight(
                &tx,
                "lease_owner = :owner",
                &[(":owner", &owner)],
                now,
                "host stopped before the attempt finished",
            )?;
            tx.commit()?;
            Ok(n)
        })
        .await
    }

    async fn recover_orphans(&self, now: Millis) -> Result<usize, StoreError> {
        self.write(move |conn| {
            let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
            let n = return_in_flight(
                &tx,
                "1 = 1",
                &[],
                now,
                "the host stopped during the attempt (crash or kill)",
            )?;
            tx.commit()?;
            Ok(n)
        })
        .await
    }

    async fn set_target_paused(&self, target: &TargetName, paused: bool, now: Millis) -> Result<bool, StoreError> {
        let target = target.clone();
        self.write(move |conn| {
            let before: bool = conn
                .prepare_cached("SELECT paused FROM target_state WHERE target = ?1")?
                .query_row([target.as_str()], |r| r.get::<_, i64>(0))
                .optional()?
                .is_some_and(|p| p != 0);
            conn.prepare_cached(
                "INSERT INTO target_state (target, paused, updated_at) VALUES (?1, ?2, ?3)
                 ON CONFLICT (target) DO UPDATE SET paused = excluded.paused, updated_at = excluded.updated_at",
            )?
            .execute(params![target.as_str(), paused as i64, now])?;
            Ok(before != paused)
        })
        .await
    }

    async fn paused_targets(&self) -> Result<Vec<String>, StoreError> {
        self.read(|conn| {
            let names = conn
                .prepare_cached("SELECT target FROM target_state WHERE paused = 1 ORDER BY target")?
                .query_map([], |r| r.get(0))?
                .collect::<Result<_, _>>()?;
            Ok(names)
        })
        .await
    }

    async fn list_failed(
        &self,
        filter: FailedFilter,
        after: i64,
        limit: usize,
    ) -> Result<Vec<FailedDelivery>, StoreError> {
        self.read(move |conn| {
            let (clause, params) = failed_where(&filter);
            let sql = format!(
                "SELECT d.id, d.event_id, e.type, d.target, d.status, d.attempts, d.last_error, d.updated_at
                 FROM deliveries d JOIN events e ON e.id = d.event_id
                 WHERE {clause} AND d.id > :after ORDER BY d.id LIMIT :limit"
            );
            let limit = limit as i64;
            let mut bind = bind_refs(&params);
            bind.push((":after", &after));
            bind.push((":limit", &limit));
            let mut stmt = conn.prepare(&sql)?;
            let rows: Vec<_> = stmt
                .query_map(bind.as_slice(), |r| {
                    Ok((
                        r.get::<_, i64>(0)?,
                        r.get::<_, String>(1)?,
                        r.get::<_, String>(2)?,
                        r.get::<_, String>(3)?,
                        r.get::<_, String>(4)?,
                        r.get::<_, u32>(5)?,
                        r.get::<_, Option<String>>(6)?,
                        r.get::<_, i64>(7)?,
                    ))
                })?
                .collect::<Result<_, _>>()?;
            rows.into_iter()
                .map(
                    |(delivery_id, event_id, event_type, target, status, attempts, last_error, failed_at)| {
                        Ok(FailedDelivery {
                            delivery_id,
                            event_id: parse(event_id)?,
                            event_type,
                            target: parse(target)?,
                            status: parse(status)?,
                            attempts,
                            last_error,
                            failed_at,
                        })
                    },
                )
                .collect()
        })
        .await
    }

    async fn count_failed(&self, filter: FailedFilter) -> Result<u64, StoreError> {
        self.read(move |conn| {
            let (clause, params) = failed_where(&filter);
            let sql = format!("SELECT COUNT(*) FROM deliveries d WHERE {clause}");
            let n = conn
                .prepare(&sql)?
                .query_row(bind_refs(&params).as_slice(), |r| r.get(0))?;
            Ok(n)
        })
        .await
    }

    async fn replay(&self, filter: FailedFilter, limit: usize, now: Millis) -> Result<usize, StoreError> {
        self.write(move |conn| {
            let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
            let (clause, params) = failed_where(&filter);
            let sql = format!(
                "UPDATE deliveries
                 SET status = '{pending}', attempts = 0, next_attempt_at = :now, updated_at = :now
                 WHERE id IN (SELECT d.id FROM deliveries d WHERE {clause} ORDER BY d.id LIMIT :limit)",
                pending = DeliveryStatus::Pending.as_str()
            );
            let limit = limit as i64;
            let mut bind = bind_refs(&params);
            bind.push((":now", &now));
            bind.push((":limit", &limit));
            let n = tx.prepare(&sql)?.execute(bind.as_slice())?;
            tx.commit()?;
            Ok(n)
        })
        .await
    }

    async fn sync_paused(&self, live: Vec<TargetName>) -> Result<(usize, usize), StoreError> {
        self.write(move |conn| {
            let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
            tx.execute(
                "CREATE TEMP TABLE IF NOT EXISTS live_targets (name TEXT PRIMARY KEY)",
                [],
            )?;
            tx.execute("DELETE FROM live_targets", [])?;
            {
                let mut insert = tx.prepare_cached("INSERT OR IGNORE INTO live_targets (name) VALUES (?1)")?;
                for name in &live {
                    insert.execute([name.as_str()])?;
                }
            }
            let pending = DeliveryStatus::Pending.as_str();
            let paused = DeliveryStatus::Paused.as_str();
            let n_paused = tx.execute(
                &format!(
                    "UPDATE deliveries SET status = '{paused}'
                     WHERE status = '{pending}' AND target NOT IN (SELECT name FROM live_targets)"
                ),
                [],
            )?;
            let n_resumed = tx.execute(
                &format!(
                    "UPDATE deliveries SET status = '{pending}'
                     WHERE status = '{paused}' AND target IN (SELECT name FROM live_targets)"
                ),
                [],
            )?;
            tx.execute("DELETE FROM live_targets", [])?;
            tx.commit()?;
            Ok((n_paused, n_resumed))
        })
        .await
    }

    async fn version_attempts(&self) -> Result<VersionAttempts, StoreError> {
        self.read(|conn| {
            let mut out = VersionAttempts::new();
            let rows: Vec<(String, String, u64)> = conn
                .prepare_cached("SELECT target, plugin_hash, attempts FROM version_attempts")?
                .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?
                .collect::<Result<_, _>>()?;
            for (target, hash, n) in rows {
                out.entry(target).or_default().insert(hash, n);
            }
            Ok(out)
        })
        .await
    }

    async fn next_due(&self, target: &TargetName) -> Result<Option<Millis>, StoreError> {
        let target = target.clone();
        self.read(move |conn| {
            let due: Option<i64> = conn
                .prepare_cached(&format!(
                    "SELECT MIN(next_attempt_at) FROM deliveries WHERE target = ?1 AND status = '{}'",
                    DeliveryStatus::Pending.as_str()
                ))?
                .query_row([target.as_str()], |r| r.get(0))?;
            Ok(due)
        })
        .await
    }

    async fn event(&self, id: EventId) -> Result<Option<EventDetail>, StoreError> {
        self.read(move |conn| {
            let tx = conn.transaction()?;
            let Some(event) = load_event(&tx, &id.to_string())? else {
                return Ok(None);
            };
            let rows: Vec<_> = tx
                .prepare_cached(
                    "SELECT id, target, status, attempts, last_error, next_attempt_at, delivered_at,
                            attempt_seq, updated_at
                     FROM deliveries WHERE event_id = ?1 ORDER BY target",
                )?
                .query_map([id.to_string()], |r| {
                    Ok((
                        r.get::<_, i64>(0)?,
                        r.get::<_, String>(1)?,
                        r.get::<_, String>(2)?,
                        r.get::<_, u32>(3)?,
                        r.get::<_, Option<String>>(4)?,
                        r.get::<_, i64>(5)?,
                        r.get::<_, Option<i64>>(6)?,
                        r.get::<_, u32>(7)?,
                        r.get::<_, i64>(8)?,
                    ))
                })?
                .collect::<Result<_, _>>()?;
            let mut history_stmt = tx.prepare_cached(
                "SELECT n, started_at, duration_ms, outcome, error, plugin_hash
                 FROM attempts WHERE delivery_id = ?1 ORDER BY n",
            )?;
            let mut deliveries = Vec::with_capacity(rows.len());
            for (delivery_id, target, status, attempts, last_error, next_attempt_at, delivered_at, seq, claimed_at) in
                rows
            {
                let status: DeliveryStatus = parse(status)?;
                let mut history = history_stmt
                    .query_map([delivery_id], |r| {
                        Ok((
                            r.get::<_, u32>(0)?,
                            r.get::<_, i64>(1)?,
                            r.get::<_, Option<i64>>(2)?,
                            r.get::<_, String>(3)?,
                            r.get::<_, Option<String>>(4)?,
                            r.get::<_, Option<String>>(5)?,
                        ))
                    })?
                    .map(|row| {
                        let (n, started_at, duration_ms, outcome, error, plugin_hash) = row?;
                        Ok(AttemptRecord {
                            n,
                            started_at,
                            duration_ms: duration_ms.map(|d| d as u64),
                            outcome: parse(outcome)?,
                            error,
                            plugin_hash,
                        })
                    })
                    .collect::<Result<Vec<_>, StoreError>>()?;
                // The attempt under way has no row until it ends: it is the lease itself.
                if status == DeliveryStatus::InFlight && history.last().is_none_or(|h| h.n < seq) {
                    history.push(AttemptRecord {
                        n: seq,
                        started_at: claimed_at,
                        duration_ms: None,
                        outcome: AttemptOutcome::Running,
                        error: None,
                        plugin_hash: None,
                    });
                }
                deliveries.push(DeliveryDetail {
                    target: parse(target)?,
                    status,
                    attempts,
                    last_error,
                    next_attempt_at: (status == DeliveryStatus::Pending).then_some(next_attempt_at),
                    delivered_at,
                    history,
                });
            }
            Ok(Some(EventDetail { event, deliveries }))
        })
        .await
    }

    async fn hold_target(&self, target: &TargetName, reason: &str, now: Millis) -> Result<usize, StoreError> {
        let (target, reason) = (target.to_string(), reason.to_owned());
        self.write(move |conn| {
            let n = conn.execute(
                &format!(
                    "UPDATE deliveries SET status = '{paused}', last_error = ?2, updated_at = ?3
                     WHERE target = ?1
                       AND (status = '{pending}' OR (status = '{paused}' AND last_error IS NOT ?2))",
                    paused = DeliveryStatus::Paused.as_str(),
                    pending = DeliveryStatus::Pending.as_str(),
                ),
                params![target, reason, now],
            )?;
            Ok(n)
        })
        .await
    }

    async fn prune_finished(&self, before: Millis, limit: usize) -> Result<usize, StoreError> {
        self.write(move |conn| {
            let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
            tx.execute("CREATE TEMP TABLE IF NOT EXISTS prune_events (id TEXT PRIMARY KEY)", [])?;
            tx.execute("DELETE FROM prune_events", [])?;
            let n = tx.execute(
                &format!(
                    "INSERT INTO prune_events (id)
                     SELECT e.id FROM events e
                     WHERE e.created_at < ?1
                       AND NOT EXISTS (SELECT 1 FROM deliveries d
                                       WHERE d.event_id = e.id AND d.status NOT IN ('{delivered}', '{discarded}'))
                     ORDER BY e.created_at LIMIT ?2",
                    delivered = DeliveryStatus::Delivered.as_str(),
                    discarded = DeliveryStatus::Discarded.as_str(),
                ),
                params![before, limit as i64],
            )?;
            delete_pruned_events(&tx)?;
            tx.commit()?;
            Ok(n)
        })
        .await
    }

    async fn prune_idempotency_keys(&self, before: Millis, limit: usize) -> Result<usize, StoreError> {
        self.write(move |conn| {
            let n = conn.execute(
                "DELETE FROM idempotency_keys WHERE rowid IN
                     (SELECT rowid FROM idempotency_keys WHERE created_at < ?1 ORDER BY created_at LIMIT ?2)",
                params![before, limit as i64],
            )?;
            Ok(n)
        })
        .await
    }

    async fn prune_failed(&self, filter: FailedFilter, limit: usize) -> Result<usize, StoreError> {
        self.write(move |conn| {
            let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
            tx.execute(
                "CREATE TEMP TABLE IF NOT EXISTS prune_deliveries (id INTEGER PRIMARY KEY, event_id TEXT NOT NULL)",
                [],
            )?;
            tx.execute("DELETE FROM prune_deliveries", [])?;
            let (clause, params) = failed_where(&filter);
            let limit = limit as i64;
            let mut bind = bind_refs(&params);
            bind.push((":limit", &limit));
            let n = tx
                .prepare(&format!(
                    "INSERT INTO prune_deliveries (id, event_id)
                     SELECT d.id, d.event_id FROM deliveries d WHERE {clause} ORDER BY d.id LIMIT :limit"
                ))?
                .execute(bind.as_slice())?;
            tx.execute(
                "DELETE FROM attempts WHERE delivery_id IN (SELECT id FROM prune_deliveries)",
                [],
            )?;
            tx.execute(
                "DELETE FROM deliveries WHERE id IN (SELECT id FROM prune_deliveries)",
                [],
            )?;
            // Events left with no delivery at all go too.
            tx.execute("CREATE TEMP TABLE IF NOT EXISTS prune_events (id TEXT PRIMARY KEY)", [])?;
            tx.execute("DELETE FROM prune_events", [])?;
            tx.execute(
                "INSERT OR IGNORE INTO prune_events (id)
                 SELECT p.event_id FROM prune_deliveries p
                 WHERE NOT EXISTS (SELECT 1 FROM deliveries d WHERE d.event_id = p.event_id)",
                [],
            )?;
            delete_pruned_events(&tx)?;
            tx.execute("DELETE FROM prune_deliveries", [])?;
            tx.commit()?;
            Ok(n)
        })
        .await
    }

    async fn status_counts(&self) -> Result<StatusCounts, StoreError> {
        self.read(|conn| {
            let mut counts = StatusCounts::new();
            let rows: Vec<(String, String, u64)> = conn
                .prepare_cached("SELECT target, status, COUNT(*) FROM deliveries GROUP BY target, status")?
                .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?
                .collect::<Result<_, _>>()?;
            for (target, status, n) in rows {
                counts.entry(target).or_default().insert(parse(status)?, n);
            }
            Ok(counts)
        })
        .await
    }

    async fn oldest_due(&self, now: Millis) -> Result<std::collections::BTreeMap<String, Millis>, StoreError> {
        self.read(move |conn| {
            let rows = conn
                .prepare_cached(&format!(
                    "SELECT target, MIN(next_attempt_at) FROM deliveries \
                     WHERE status = '{}' AND next_attempt_at <= ?1 GROUP BY target",
                    DeliveryStatus::Pending.as_str()
                ))?
                .query_map([now], |r| Ok((r.get::<_, String>(0)?, r.get::<_, Millis>(1)?)))?
                .collect::<Result<_, _>>()?;
            Ok(rows)
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::{EventType, ProducerKey};
    use crate::store::FailedFilter;

    fn t(name: &str) -> TargetName {
        name.parse().unwrap()
    }

    fn event(key: Option<&str>, targets: &[&str]) -> NewEvent {
        NewEvent {
            id: EventId::new(),
            event_type: EventType::try_from("order.created".to_string()).unwrap(),
            payload: r#"{"n":1}"#.into(),
            headers: vec![("x-source".into(), "test".into())],
            idempotency_key: key.map(|k| ProducerKey::try_from(k.to_string()).unwrap()),
            ordering_key: None,
            targets: targets.iter().map(|n| t(n)).collect(),
        }
    }

    fn store() -> (tempfile::TempDir, SqliteStore) {
        let dir = tempfile::tempdir().unwrap();
        let s = SqliteStore::open_exclusive(&dir.path().join("o.db")).unwrap();
        (dir, s)
    }

    fn settlement(c: &Claimed, status: DeliveryStatus, outcome: AttemptOutcome, at: Millis) -> Settlement {
        Settlement {
            target: c.target.clone(),
            delivery_id: c.delivery_id,
            seq: c.seq,
            status,
            next_attempt_at: at,
            last_error: None,
            outcome,
            finished_at: at,
            duration_ms: 3,
            plugin_hash: Some("abc".into()),
            emit: Vec::new(),
        }
    }

    #[tokio::test]
    async fn ingest_writes_one_delivery_per_target_and_dedupes_keys() {
        let (_d, s) = store();
        let first = s
            .ingest(vec![event(Some("k1"), &["crm", "billing"])], 10)
            .await
            .unwrap();
        assert!(!first[0].duplicate);
        let again = s
            .ingest(vec![event(Some("k1"), &["crm", "billing"])], 20)
            .await
            .unwrap();
        assert_eq!(
            again[0],
            Ingested {
                id: first[0].id,
                duplicate: true
            }
        );
        let detail = s.event(first[0].id).await.unwrap().unwrap();
        assert_eq!(detail.deliveries.len(), 2);
        assert!(detail.deliveries.iter().all(|d| d.status == DeliveryStatus::Pending));
        assert_eq!(detail.event.headers, vec![("x-source".to_string(), "test".to_string())]);
        let counts = s.status_counts().await.unwrap();
        assert_eq!(counts["crm"][&DeliveryStatus::Pending], 1);
    }

    #[tokio::test]
    async fn unclaimed_deliveries_are_pending_again_as_if_never_claimed() {
        let (_d, s) = store();
        s.ingest(
            vec![event(None, &["crm"]), event(None, &["crm"]), event(None, &["crm"])],
            0,
        )
        .await
        .unwrap();
        let claimed = s.claim(&t("crm"), 10, "a", 100, 1_000, false).await.unwrap();
        assert_eq!(claimed.len(), 3);
        let back: Vec<(i64, u32)> = claimed[1..].iter().map(|c| (c.delivery_id, c.seq)).collect();
        // Someone else's lease, or a stale seq, is left alone.
        assert_eq!(s.unclaim("b", back.clone()).await.unwrap(), 0);
        assert_eq!(s.unclaim("a", vec![(claimed[1].delivery_id, 7)]).await.unwrap(), 0);
        assert_eq!(s.unclaim("a", back).await.unwrap(), 2);
        for (i, c) in claimed.iter().enumerate() {
            let d = &s.event(c.event.id).await.unwrap().unwrap().deliveries[0];
            if i == 0 {
                assert_eq!(
                    (d.status, d.attempts, d.history.len()),
                    (DeliveryStatus::InFlight, 1, 1)
                );
            } else {
                assert_eq!((d.status, d.attempts, d.history.len()), (DeliveryStatus::Pending, 0, 0));
            }
        }
        // Claimed again, they start from attempt 1 with history row 1.
        let again = s.claim(&t("crm"), 10, "b", 200, 1_000, false).await.unwrap();
        assert_eq!(again.len(), 2);
        assert!(again.iter().all(|c| c.attempt == 1 && c.seq == 1));
    }

    #[tokio::test]
    async fn a_lease_is_exclusive_until_it_expires() {
        let (_d, s) = store();
        s.ingest(vec![event(None, &["crm"])], 0).await.unwrap();
        let a = s.claim(&t("crm"), 10, "a", 100, 1_000, false).await.unwrap();
        assert_eq!(a.len(), 1);
        assert_eq!(a[0].attempt, 1);
        assert!(s.claim(&t("crm"), 10, "b", 500, 2_000, false).await.unwrap().is_empty());
        // After expiry another worker takes it over; the first attempt is abandoned.
        let b = s.claim(&t("crm"), 10, "b", 1_000, 2_000, false).await.unwrap();
        assert_eq!(b.len(), 1);
        assert_eq!(b[0].attempt, 2);
        let d = &s.event(a[0].event.id).await.unwrap().unwrap().deliveries[0];
        let history: Vec<_> = d.history.iter().map(|h| (h.n, h.started_at, h.outcome)).collect();
        assert_eq!(
            history,
            [(1, 100, AttemptOutcome::Abandoned), (2, 1_000, AttemptOutcome::Running)]
        );
        // The first worker's late outcome cannot change the delivery any more...
        let report = s
            .settle(
                "a",
                vec![settlement(
                    &a[0],
                    DeliveryStatus::Dead,
                    AttemptOutcome::Permanent,
                    1_100,
                )],
            )
            .await
            .unwrap();
        assert_eq!(report.lost_leases, vec![a[0].delivery_id]);
        // ...but the current holder's can.
        let report = s
            .settle(
                "b",
                vec![settlement(
                    &b[0],
                    DeliveryStatus::Delivered,
                    AttemptOutcome::Delivered,
                    1_200,
                )],
            )
            .await
            .unwrap();
        assert!(report.lost_leases.is_empty());
        let detail = s.event(a[0].event.id).await.unwrap().unwrap();
        let d = &detail.deliveries[0];
        assert_eq!(d.status, DeliveryStatus::Delivered);
        assert_eq!(d.delivered_at, Some(1_200));
        let outcomes: Vec<_> = d.history.iter().map(|h| h.outcome).collect();
        assert_eq!(outcomes, [AttemptOutcome::Permanent, AttemptOutcome::Delivered]);
    }

    #[tokio::test]
    async fn claims_respect_due_time_and_limit() {
        let (_d, s) = store();
        s.ingest((0..5).map(|_| event(None, &["crm"])).collect(), 100)
            .await
            .unwrap();
        assert!(s.claim(&t("crm"), 10, "a", 99, 1_000, false).await.unwrap().is_empty());
        assert_eq!(s.claim(&t("crm"), 3, "a", 100, 1_000, false).await.unwrap().len(), 3);
        assert_eq!(s.claim(&t("crm"), 3, "a", 100, 1_000, false).await.unwrap().len(), 2);
        assert!(
            s.claim(&t("billing"), 3, "a", 100, 1_000, false)
                .await
                .unwrap()
                .is_empty()
        );
    }

    #[tokio::test]
    async fn retry_reschedules_and_release_and_recovery_return_work() {
        let (_d, s) = store();
        s.ingest(vec![event(None, &["crm"]), event(None, &["crm"])], 0)
            .await
            .unwrap();
        let c = s.claim(&t("crm"), 1, "a", 0, 1_000, false).await.unwrap();
        let mut retry = settlement(&c[0], DeliveryStatus::Pending, AttemptOutcome::Retry, 10);
        retry.next_attempt_at = 500;
        retry.last_error = Some("503".into());
        s.settle("a", vec![retry]).await.unwrap();
        assert_eq!(
            s.next_due(&t("crm")).await.unwrap(),
            Some(0),
            "the other delivery is still due"
        );

        let other = s.claim(&t("crm"), 1, "a", 10, 1_000, false).await.unwrap();
        assert_eq!(other.len(), 1);
        assert_eq!(s.next_due(&t("crm")).await.unwrap(), Some(500));
        assert_eq!(s.release("a", 20).await.unwrap(), 1);
        assert_eq!(s.next_due(&t("crm")).await.unwrap(), Some(20));

        let again = s.claim(&t("crm"), 5, "b", 600, 2_000, false).await.unwrap();
        assert_eq!(again.len(), 2);
        assert_eq!(s.recover_orphans(700).await.unwrap(), 2);
        let detail = s.event(again[0].event.id).await.unwrap().unwrap();
        let d = &detail.deliveries[0];
        assert_eq!(d.status, DeliveryStatus::Pending);
        assert_eq!(d.history.last().unwrap().outcome, AttemptOutcome::Abandoned);
    }

    #[tokio::test]
    async fn a_second_exclusive_open_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("o.db");
        let _first = SqliteStore::open_exclusive(&path).unwrap();
        let err = SqliteStore::open_exclusive(&path).unwrap_err();
        assert!(matches!(err, StoreError::Locked { .. }), "{err}");
        // A client (the CLI) may still open it beside the server.
        SqliteStore::open(&path).unwrap();
    }

    fn keyed(key: &str) -> NewEvent {
        NewEvent {
            ordering_key: Some(key.into()),
            ..event(None, &["crm"])
        }
    }

    #[tokio::test]
    async fn ordered_claims_wait_for_earlier_deliveries_of_the_same_key() {
        let (_d, s) = store();
        s.ingest(vec![keyed("A"), keyed("A"), keyed("B"), event(None, &["crm"])], 0)
            .await
            .unwrap();
        let first = s.claim(&t("crm"), 10, "w", 0, 1_000, true).await.unwrap();
        let keys: Vec<_> = first.iter().map(|c| c.event.ordering_key.clone()).collect();
        assert_eq!(keys, [Some("A".into()), Some("B".into()), None], "the second A waits");
        // The head of A fails and is rescheduled: A stays blocked, nothing else is.
        let head = &first[0];
        let mut retry = settlement(head, DeliveryStatus::Pending, AttemptOutcome::Retry, 1);
        retry.next_attempt_at = 500;
        s.settle("w", vec![retry]).await.unwrap();
        assert!(s.claim(&t("crm"), 10, "w", 100, 1_000, true).await.unwrap().is_empty());
        // Unordered claiming ignores keys.
        assert_eq!(s.claim(&t("crm"), 10, "x", 100, 1_000, false).await.unwrap().len(), 1);
    }

    #[tokio::test]
    async fn ordered_head_that_dies_unblocks_its_key() {
        let (_d, s) = store();
        s.ingest(vec![keyed("A"), keyed("A")], 0).await.unwrap();
        let head = s.claim(&t("crm"), 10, "w", 0, 1_000, true).await.unwrap();
        assert_eq!(head.len(), 1);
        s.settle(
            "w",
            vec![settlement(&head[0], DeliveryStatus::Dead, AttemptOutcome::Permanent, 1)],
        )
        .await
        .unwrap();
        let next = s.claim(&t("crm"), 10, "w", 2, 1_000, true).await.unwrap();
        assert_eq!(next.len(), 1);
        assert_ne!(next[0].delivery_id, head[0].delivery_id);
    }

    #[tokio::test]
    async fn replay_resets_attempts_keeps_history_and_is_idempotent() {
        let (_d, s) = store();
        s.ingest(vec![event(None, &["crm", "billing"]), event(None, &["crm"])], 0)
            .await
            .unwrap();
        for target in ["crm", "billing"] {
            for c in s.claim(&t(target), 10, "w", 0, 1_000, false).await.unwrap() {
                let mut dead = settlement(&c, DeliveryStatus::Dead, AttemptOutcome::Permanent, 10);
                dead.last_error = Some(format!("permanent failure: HTTP 400 from {target}"));
                s.settle("w", vec![dead]).await.unwrap();
            }
        }
        let only_crm = FailedFilter {
            target: Some(t("crm")),
            error_contains: Some("http 400".into()),
            ..FailedFilter::default()
        };
        assert_eq!(s.count_failed(only_crm.clone()).await.unwrap(), 2);
        assert_eq!(s.list_failed(FailedFilter::default(), 0, 10).await.unwrap().len(), 3);
        assert_eq!(
            s.replay(only_crm.clone(), 1, 20).await.unwrap(),
            1,
            "limit caps a chunk"
        );
        assert_eq!(s.replay(only_crm.clone(), 100, 20).await.unwrap(), 1);
        assert_eq!(
            s.replay(only_crm, 100, 20).await.unwrap(),
            0,
            "replaying again does nothing"
        );

        let again = s.claim(&t("crm"), 10, "w", 30, 1_000, false).await.unwrap();
        assert_eq!(again.len(), 2);
        assert!(
            again.iter().all(|c| c.attempt == 1 && c.seq == 2),
            "count reset, history numbering goes on"
        );
        let detail = s.event(again[0].event.id).await.unwrap().unwrap();
        let crm = detail.deliveries.iter().find(|d| d.target.as_str() == "crm").unwrap();
        assert_eq!(crm.history.len(), 2, "the first attempt's record is kept");
    }

    #[tokio::test]
    async fn a_database_of_the_previous_schema_keeps_its_history_through_the_upgrade() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("o.db");
        {
            // The schema of the release before the attempts table lost its rowid.
            let conn = Connection::open(&path).unwrap();
            for sql in &MIGRATIONS[..2] {
                conn.execute_batch(sql).unwrap();
            }
            conn.pragma_update(None, "user_version", 2).unwrap();
            conn.execute_batch(
                "INSERT INTO events (id, type, payload, headers, created_at)
                     VALUES ('01a2200a-c31e-724e-b564-e1df5db6fbb0', 'order.created', '{}', '[]', 5);
                 INSERT INTO deliveries (id, event_id, target, status, attempts, attempt_seq, next_attempt_at,
                                         updated_at)
                     VALUES (1, '01a2200a-c31e-724e-b564-e1df5db6fbb0', 'crm', 'pending', 1, 1, 5, 5);
                 INSERT INTO attempts (delivery_id, n, started_at, duration_ms, outcome, error, plugin_hash)
                     VALUES (1, 1, 5, 7, 'retry', 'HTTP 503', 'abc');",
            )
            .unwrap();
        }
        let s = SqliteStore::open_exclusive(&path).unwrap();
        let id: EventId = "01a2200a-c31e-724e-b564-e1df5db6fbb0".parse().unwrap();
        let detail = s.event(id).await.unwrap().unwrap();
        let history = &detail.deliveries[0].history;
        assert_eq!(history.len(), 1, "{history:?}");
        assert_eq!(history[0].outcome, AttemptOutcome::Retry);
        assert_eq!(history[0].error.as_deref(), Some("HTTP 503"));
        // The upgraded store claims, records and settles as a new one does.
        let claimed = s.claim(&t("crm"), 10, "w", 10, 1_000, false).await.unwrap();
        assert_eq!(claimed.len(), 1);
        assert_eq!((claimed[0].attempt, claimed[0].seq), (2, 2));
        s.settle(
            "w",
            vec![settlement(
                &claimed[0],
                DeliveryStatus::Delivered,
                AttemptOutcome::Delivered,
                20,
            )],
        )
        .await
        .unwrap();
        let detail = s.event(id).await.unwrap().unwrap();
        assert_eq!(detail.deliveries[0].history.len(), 2);
        assert_eq!(detail.deliveries[0].history[1].outcome, AttemptOutcome::Delivered);
    }

    #[tokio::test]
    async fn paused_targets_claim_nothing_until_resumed() {
        let (_d, s) = store();
        s.ingest(vec![event(None, &["crm"])], 0).await.unwrap();
        assert!(s.set_target_paused(&t("crm"), true, 0).await.unwrap());
        assert!(
            !s.set_target_paused(&t("crm"), true, 0).await.unwrap(),
            "already paused"
        );
        assert_eq!(s.paused_targets().await.unwrap(), ["crm"]);
        assert!(s.claim(&t("crm"), 10, "w", 0, 1_000, false).await.unwrap().is_empty());
        s.set_target_paused(&t("crm"), false, 0).await.unwrap();
        assert_eq!(s.claim(&t("crm"), 10, "w", 0, 1_000, false).await.unwrap().len(), 1);
    }

    #[tokio::test]
    async fn heartbeat_keeps_leases_and_sweeper_returns_expired_ones() {
        let (_d, s) = store();
        s.ingest(vec![event(None, &["crm"]), event(None, &["billing"])], 0)
            .await
            .unwrap();
        s.claim(&t("crm"), 1, "alive", 0, 100, false).await.unwrap();
        s.claim(&t("billing"), 1, "gone", 0, 100, false).await.unwrap();
        assert_eq!(s.extend_leases("alive", 1_000).await.unwrap(), 1);
        assert_eq!(
            s.sweep_expired(500).await.unwrap(),
            1,
            "only the dead worker's lease expired"
        );
        assert_eq!(s.next_due(&t("billing")).await.unwrap(), Some(500));
        assert_eq!(s.next_due(&t("crm")).await.unwrap(), None, "still in flight");
    }

    #[tokio::test]
    async fn settle_emits_events_only_when_the_lease_holds() {
        let (_d, s) = store();
        s.ingest(vec![event(None, &["crm"])], 0).await.unwrap();
        let c = s.claim(&t("crm"), 1, "w", 0, 100, false).await.unwrap();
        let op = |key: &str| NewEvent {
            event_type: EventType::try_from("outboxd.delivery.dead".to_string()).unwrap(),
            idempotency_key: Some(ProducerKey::try_from(key.to_string()).unwrap()),
            ..event(None, &["alerts"])
        };
        let mut lost = settlement(&c[0], DeliveryStatus::Dead, AttemptOutcome::Permanent, 1);
        lost.emit = vec![op("k-lost")];
        let report = s.settle("someone-else", vec![lost]).await.unwrap();
        assert_eq!(report.lost_leases.len(), 1);
        assert!(
            !s.status_counts().await.unwrap().contains_key("alerts"),
            "no event from a lost lease"
        );

        let mut held = settlement(&c[0], DeliveryStatus::Dead, AttemptOutcome::Permanent, 1);
        held.emit = vec![op("k-held")];
        s.settle("w", vec![held]).await.unwrap();
        assert_eq!(s.status_counts().await.unwrap()["alerts"][&DeliveryStatus::Pending], 1);
    }
}
