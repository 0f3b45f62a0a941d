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

use super::{
    AttemptRecord, Claimed, DeliveryDetail, EventDetail, Ingested, NewEvent, SettleReport, Settlement, StatusCounts,
    Store, StoreError, StoredEvent, VersionAttempts,
};
use crate::domain::{AttemptOutcome, DeliveryStatus, EventId, Millis, TargetName};

/// Schema migrations, applied in order; `PRAGMA user_version` counts the applied ones.
const MIGRATIONS: &[&str] = &[r#"
CREATE TABLE events (
    id              TEXT PRIMARY KEY,
    type            TEXT NOT NULL,
    payload         TEXT NOT NULL,
    headers         TEXT NOT NULL,
    idempotency_key TEXT,
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
    status           TEXT NOT NULL CHECK (status IN ('pending', 'in_flight', 'delivered', 'dead', 'paused')),
    attempts         INTEGER NOT NULL DEFAULT 0,
    next_attempt_at  INTEGER NOT NULL,
    lease_owner      TEXT,
    lease_expires_at INTEGER,
    last_error       TEXT,
    delivered_at     INTEGER,
    UNIQUE (event_id, target)
) STRICT;
CREATE INDEX deliveries_due ON deliveries (target, status, next_attempt_at);
CREATE INDEX deliveries_lease ON deliveries (lease_owner) WHERE lease_owner IS NOT NULL;

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
"#];

/// The embedded SQLite store.
#[derive(Clone)]
pub struct SqliteStore {
    writer: Arc<Mutex<Connection>>,
    reader: Arc<Mutex<Connection>>,
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
    conn.pragma_update(None, "synchronous", "FULL")?;
    conn.pragma_update(None, "foreign_keys", "ON")?;
    conn.busy_timeout(std::time::Duration::from_secs(10))?;
    Ok(conn)
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
            writer: Arc::new(Mutex::new(writer)),
            reader: Arc::new(Mutex::new(reader)),
            _lock: lock,
        })
    }

    async fn run<R, F>(conn: &Arc<Mutex<Connection>>, f: F) -> Result<R, StoreError>
    where
        R: Send + 'static,
        F: FnOnce(&mut Connection) -> Result<R, StoreError> + Send + 'static,
    {
        let conn = Arc::clone(conn);
        tokio::task::spawn_blocking(move || {
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
        Self::run(&self.writer, f).await
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
        .prepare_cached("SELECT id, type, payload, headers, idempotency_key, created_at FROM events WHERE id = ?1")?
        .query_row([id], |r| {
            Ok((
                r.get::<_, String>(0)?,
                r.get::<_, String>(1)?,
                r.get::<_, String>(2)?,
                r.get::<_, String>(3)?,
                r.get::<_, Option<String>>(4)?,
                r.get::<_, i64>(5)?,
            ))
        })
        .optional()?;
    row.map(|(id, event_type, payload, headers, idempotency_key, created_at)| {
        Ok(StoredEvent {
            id: parse(id)?,
            event_type,
            payload,
            headers: serde_json::from_str(&headers).map_err(|e| StoreError::Corrupt(e.to_string()))?,
            idempotency_key,
            created_at,
        })
    })
    .transpose()
}

/// Marks the running history rows of the deliveries matched by `where_clause` (which may use
/// the named parameters in `bind`) as abandoned, with `why` as their error.
fn abandon_running(
    tx: &Connection,
    where_clause: &str,
    bind: &[(&str, &dyn rusqlite::ToSql)],
    why: &str,
) -> Result<(), StoreError> {
    let sql = format!(
        "UPDATE attempts SET outcome = '{abandoned}', error = :why
         WHERE outcome = '{running}' AND delivery_id IN (SELECT id FROM deliveries WHERE {where_clause})",
        abandoned = AttemptOutcome::Abandoned.as_str(),
        running = AttemptOutcome::Running.as_str(),
    );
    let mut all = bind.to_vec();
    all.push((":why", &why));
    tx.prepare_cached(&sql)?.execute(all.as_slice())?;
    Ok(())
}

#[async_trait]
impl Store for SqliteStore {
    async fn ingest(&self, events: Vec<NewEvent>, now: Millis) -> Result<Vec<Ingested>, StoreError> {
        self.write(move |conn| {
            let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
            let mut out = Vec::with_capacity(events.len());
            {
                let mut find_key = tx.prepare_cached("SELECT event_id FROM idempotency_keys WHERE key = ?1")?;
                let mut insert_event = tx.prepare_cached(
                    "INSERT INTO events (id, type, payload, headers, idempotency_key, created_at)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                )?;
                let mut insert_key =
                    tx.prepare_cached("INSERT INTO idempotency_keys (key, event_id, created_at) VALUES (?1, ?2, ?3)")?;
                let mut insert_delivery = tx.prepare_cached(
                    "INSERT INTO deliveries (event_id, target, status, next_attempt_at) VALUES (?1, ?2, ?3, ?4)",
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
                    insert_event.execute(params![id, e.event_type.as_str(), e.payload, headers, key, now])?;
                    if let Some(key) = key {
                        insert_key.execute(params![key, id, now])?;
                    }
                    for target in &e.targets {
                        insert_delivery.execute(params![id, target.as_str(), DeliveryStatus::Pending.as_str(), now])?;
                    }
                    out.push(Ingested {
                        id: e.id,
                        duplicate: false,
                    });
                }
            }
            tx.commit()?;
            Ok(out)
        })
        .await
    }

    async fn claim(
        &self,
        target: &TargetName,
        limit: usize,
        owner: &str,
        now: Millis,
        lease_until: Millis,
    ) -> Result<Vec<Claimed>, StoreError> {
        let target = target.clone();
        let owner = owner.to_owned();
        self.write(move |conn| {
            let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
            let pending = DeliveryStatus::Pending.as_str();
            let in_flight = DeliveryStatus::InFlight.as_str();
            // Expired leases: the attempt they covered never reported back.
            abandon_running(
                &tx,
                &format!("target = :target AND status = '{in_flight}' AND lease_expires_at <= :now"),
                &[(":target", &target.as_str()), (":now", &now)],
                "lease expired before the attempt reported back",
            )?;
            let claimed: Vec<(i64, String, u32)> = tx
                .prepare_cached(&format!(
                    "UPDATE deliveries
                     SET status = '{in_flight}', lease_owner = ?2, lease_expires_at = ?3, attempts = attempts + 1
                     WHERE id IN (
                         SELECT id FROM deliveries
                         WHERE target = ?1 AND (
                             (status = '{pending}' AND next_attempt_at <= ?4)
                             OR (status = '{in_flight}' AND lease_expires_at <= ?4))
                         ORDER BY next_attempt_at, id
                         LIMIT ?5)
                     RETURNING id, event_id, attempts"
                ))?
                .query_map(params![target.as_str(), owner, lease_until, now, limit as i64], |r| {
                    Ok((r.get(0)?, r.get(1)?, r.get(2)?))
                })?
                .collect::<Result<_, _>>()?;
            let mut out = Vec::with_capacity(claimed.len());
            {
                let mut open_attempt = tx.prepare_cached(&format!(
                    "INSERT INTO attempts (delivery_id, n, started_at, outcome) VALUES (?1, ?2, ?3, '{}')
                     ON CONFLICT (delivery_id, n) DO UPDATE SET started_at = excluded.started_at,
                        outcome = excluded.outcome, error = NULL, duration_ms = NULL",
                    AttemptOutcome::Running.as_str()
                ))?;
                for (delivery_id, event_id, attempt) in claimed {
                    open_attempt.execute(params![delivery_id, attempt, now])?;
                    let event = load_event(&tx, &event_id)?.ok_or_else(|| {
                        StoreError::Corrupt(format!("delivery {delivery_id} has no event {event_id}"))
                    })?;
                    out.push(Claimed {
                        delivery_id,
                        target: target.clone(),
                        attempt,
                        event,
                    });
                }
            }
            out.sort_by_key(|c| c.delivery_id);
            tx.commit()?;
            Ok(out)
        })
        .await
    }

    async fn settle(&self, owner: &str, batch: Vec<Settlement>) -> Result<SettleReport, StoreError> {
        let owner = owner.to_owned();
        self.write(move |conn| {
            let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
            let mut report = SettleReport::default();
            {
                let mut update = tx.prepare_cached(&format!(
                    "UPDATE deliveries
                     SET status = ?1, next_attempt_at = ?2, last_error = ?3,
                         delivered_at = CASE WHEN ?1 = '{delivered}' THEN ?4 ELSE delivered_at END,
                         lease_owner = NULL, lease_expires_at = NULL
                     WHERE id = ?5 AND lease_owner = ?6 AND attempts = ?7 AND status = '{in_flight}'",
                    delivered = DeliveryStatus::Delivered.as_str(),
                    in_flight = DeliveryStatus::InFlight.as_str(),
                ))?;
                let mut record = tx.prepare_cached(
                    "UPDATE attempts SET outcome = ?1, error = ?2, duration_ms = ?3, plugin_hash = ?4
                     WHERE delivery_id = ?5 AND n = ?6",
                )?;
                let mut count_version = tx.prepare_cached(
                    "INSERT INTO version_attempts (target, plugin_hash, attempts) VALUES (?1, ?2, 1)
                     ON CONFLICT (target, plugin_hash) DO UPDATE SET attempts = attempts + 1",
                )?;
                for s in batch {
                    let changed = update.execute(params![
                        s.status.as_str(),
                        s.next_attempt_at,
                        s.last_error,
                        s.finished_at,
                        s.delivery_id,
                        owner,
                        s.attempt,
                    ])?;
                    if changed == 0 {
                        report.lost_leases.push(s.delivery_id);
                    }
                    // The attempt happened either way: the history keeps what it did.
                    record.execute(params![
                        s.outcome.as_str(),
                        s.last_error,
                        s.duration_ms as i64,
                        s.plugin_hash,
                        s.delivery_id,
                        s.attempt,
                    ])?;
                    if let Some(hash) = &s.plugin_hash {
                        count_version.execute(params![s.target.as_str(), hash])?;
                    }
                }
            }
            tx.commit()?;
            Ok(report)
        })
        .await
    }

    async fn extend_leases(&self, owner: &str, deliveries: Vec<i64>, lease_until: Millis) -> Result<usize, StoreError> {
        let owner = owner.to_owned();
        self.write(move |conn| {
            let tx = conn.transaction()?;
            let mut n = 0;
            {
                let mut stmt = tx.prepare_cached(&format!(
                    "UPDATE deliveries SET lease_expires_at = ?1
                     WHERE id = ?2 AND lease_owner = ?3 AND status = '{}'",
                    DeliveryStatus::InFlight.as_str()
                ))?;
                for id in deliveries {
                    n += stmt.execute(params![lease_until, id, owner])?;
                }
            }
            tx.commit()?;
            Ok(n)
        })
        .await
    }

    async fn release(&self, owner: &str, now: Millis) -> Result<usize, StoreError> {
        let owner = owner.to_owned();
        self.write(move |conn| {
            let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
            let in_flight = DeliveryStatus::InFlight.as_str();
            abandon_running(
                &tx,
                &format!("lease_owner = :owner AND status = '{in_flight}'"),
                &[(":owner", &owner)],
                "host stopped before the attempt finished",
            )?;
            let n = tx.execute(
                &format!(
                    "UPDATE deliveries SET status = '{pending}', lease_owner = NULL, lease_expires_at = NULL,
                        next_attempt_at = ?2
                     WHERE lease_owner = ?1 AND status = '{in_flight}'",
                    pending = DeliveryStatus::Pending.as_str(),
                ),
                params![owner, now],
            )?;
            tx.commit()?;
            Ok(n)
        })
        .await
    }

    async fn recover_orphans(&self, now: Millis) -> Result<usize, StoreError> {
        self.write(move |conn| {
            let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
            let in_flight = DeliveryStatus::InFlight.as_str();
            abandon_running(
                &tx,
                &format!("status = '{in_flight}'"),
                &[],
                "the host stopped during the attempt (crash or kill)",
            )?;
            let n = tx.execute(
                &format!(
                    "UPDATE deliveries SET status = '{pending}', lease_owner = NULL, lease_expires_at = NULL,
                        next_attempt_at = ?1
                     WHERE status = '{in_flight}'",
                    pending = DeliveryStatus::Pending.as_str(),
                ),
                params![now],
            )?;
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
                    "SELECT id, target, status, attempts, last_error, next_attempt_at, delivered_at
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
                    ))
                })?
                .collect::<Result<_, _>>()?;
            let mut history_stmt = tx.prepare_cached(
                "SELECT n, started_at, duration_ms, outcome, error, plugin_hash
                 FROM attempts WHERE delivery_id = ?1 ORDER BY n",
            )?;
            let mut deliveries = Vec::with_capacity(rows.len());
            for (delivery_id, target, status, attempts, last_error, next_attempt_at, delivered_at) in rows {
                let status: DeliveryStatus = parse(status)?;
                let history = history_stmt
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
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::{EventType, ProducerKey};

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
            attempt: c.attempt,
            status,
            next_attempt_at: at,
            last_error: None,
            outcome,
            finished_at: at,
            duration_ms: 3,
            plugin_hash: Some("abc".into()),
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
    async fn a_lease_is_exclusive_until_it_expires() {
        let (_d, s) = store();
        s.ingest(vec![event(None, &["crm"])], 0).await.unwrap();
        let a = s.claim(&t("crm"), 10, "a", 100, 1_000).await.unwrap();
        assert_eq!(a.len(), 1);
        assert_eq!(a[0].attempt, 1);
        assert!(s.claim(&t("crm"), 10, "b", 500, 2_000).await.unwrap().is_empty());
        // After expiry another worker takes it over; the first attempt is abandoned.
        let b = s.claim(&t("crm"), 10, "b", 1_000, 2_000).await.unwrap();
        assert_eq!(b.len(), 1);
        assert_eq!(b[0].attempt, 2);
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
        assert!(s.claim(&t("crm"), 10, "a", 99, 1_000).await.unwrap().is_empty());
        assert_eq!(s.claim(&t("crm"), 3, "a", 100, 1_000).await.unwrap().len(), 3);
        assert_eq!(s.claim(&t("crm"), 3, "a", 100, 1_000).await.unwrap().len(), 2);
        assert!(s.claim(&t("billing"), 3, "a", 100, 1_000).await.unwrap().is_empty());
    }

    #[tokio::test]
    async fn retry_reschedules_and_release_and_recovery_return_work() {
        let (_d, s) = store();
        s.ingest(vec![event(None, &["crm"]), event(None, &["crm"])], 0)
            .await
            .unwrap();
        let c = s.claim(&t("crm"), 1, "a", 0, 1_000).await.unwrap();
        let mut retry = settlement(&c[0], DeliveryStatus::Pending, AttemptOutcome::Retry, 10);
        retry.next_attempt_at = 500;
        retry.last_error = Some("503".into());
        s.settle("a", vec![retry]).await.unwrap();
        assert_eq!(
            s.next_due(&t("crm")).await.unwrap(),
            Some(0),
            "the other delivery is still due"
        );

        let other = s.claim(&t("crm"), 1, "a", 10, 1_000).await.unwrap();
        assert_eq!(other.len(), 1);
        assert_eq!(s.next_due(&t("crm")).await.unwrap(), Some(500));
        assert_eq!(s.release("a", 20).await.unwrap(), 1);
        assert_eq!(s.next_due(&t("crm")).await.unwrap(), Some(20));

        let again = s.claim(&t("crm"), 5, "b", 600, 2_000).await.unwrap();
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
}
