//! Opening the SQLite database: its connections and their settings, the exclusive lock file
//! of `serve`, and the schema, migrated by `PRAGMA user_version` (the count of applied
//! migrations; a database newer than this binary is refused).

use std::fs::File;
use std::path::{Path, PathBuf};

use rusqlite::{Connection, TransactionBehavior};

use super::{Synchronous, set_synchronous};
use crate::store::StoreError;

/// Schema migrations, applied in order; `PRAGMA user_version` counts the applied ones.
pub(super) const MIGRATIONS: &[&str] = &[
    include_str!("migrations/0001_initial.sql"),
    include_str!("migrations/0002_idempotency_ledger_outlives_events.sql"),
    include_str!("migrations/0003_fewer_btree_writes.sql"),
    include_str!("migrations/0004_delivery_ids_never_reused.sql"),
    include_str!("migrations/0005_readiness_probe.sql"),
    include_str!("migrations/0006_receiver_responses.sql"),
    include_str!("migrations/0007_attempt_details.sql"),
    include_str!("migrations/0008_cancelled_deliveries.sql"),
    include_str!("migrations/0009_erased_payloads.sql"),
    include_str!("migrations/0010_replay_jobs.sql"),
    include_str!("migrations/0011_trace_context.sql"),
];

/// The connections of an opened database, and its lock when taken.
pub(super) struct Opened {
    pub writer: Connection,
    pub reader: Connection,
    pub lock: Option<File>,
}

/// Opens the database at `path` (creating its directory), migrated; with `exclusive`, only
/// if no other `serve` holds its lock file.
pub(super) fn open(path: &Path, exclusive: bool) -> Result<Opened, StoreError> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(|source| StoreError::Open {
            path: path.display().to_string(),
            source,
        })?;
    }
    let lock = if exclusive { Some(take_lock(path)?) } else { None };
    let mut writer = open_connection(path)?;
    migrate(&mut writer)?;
    let reader = open_connection(path)?;
    Ok(Opened { writer, reader, lock })
}

fn lock_path(db: &Path) -> PathBuf {
    let mut p = db.as_os_str().to_owned();
    p.push(".lock");
    PathBuf::from(p)
}

/// Locks `<database>.lock` exclusively, for as long as the file stays open.
fn take_lock(path: &Path) -> Result<File, StoreError> {
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
    Ok(file)
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
    if version == supported {
        return Ok(());
    }
    // A migration may rebuild a table others refer to (SQLite's way to change a key), which
    // foreign key enforcement would turn into deleting its rows; the pragma is a no-op inside a
    // transaction, so it is switched off around them, and every migration checks the keys
    // before it commits.
    conn.pragma_update(None, "foreign_keys", "OFF")?;
    let migrated = (|| -> Result<(), StoreError> {
        for (i, sql) in MIGRATIONS.iter().enumerate().skip(version as usize) {
            let tx = conn.transaction_with_behavior(TransactionBehavior::Exclusive)?;
            tx.execute_batch(sql)?;
            let broken: i64 = tx.query_row("SELECT count(*) FROM pragma_foreign_key_check", [], |r| r.get(0))?;
            if broken > 0 {
                return Err(StoreError::Corrupt(format!(
                    "migration {} would leave {broken} rows referring to nothing",
                    i + 1
                )));
            }
            tx.pragma_update(None, "user_version", (i + 1) as i64)?;
            tx.commit()?;
        }
        Ok(())
    })();
    conn.pragma_update(None, "foreign_keys", "ON")?;
    migrated
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::{AttemptOutcome, DeliveryStatus, EventId};
    use crate::store::Store;
    use crate::store::conformance::{claim, settlement};
    use crate::store::sqlite::SqliteStore;

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

    #[tokio::test]
    async fn the_write_probe_commits_its_row_and_keeps_one() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("o.db");
        let store = SqliteStore::open_exclusive(&path).unwrap();
        store.probe_write(7).await.unwrap();
        store.probe_write(9).await.unwrap();
        let conn = Connection::open(&path).unwrap();
        let rows: Vec<(i64, i64)> = conn
            .prepare("SELECT id, probed_at FROM readiness_probe")
            .unwrap()
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        assert_eq!(rows, [(1, 9)]);
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
        let claimed = s.claim(claim("crm", 10, "w", 10, 1_000)).await.unwrap();
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
    async fn the_rebuild_for_cancelled_keeps_rows_indexes_and_the_id_counter() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("o.db");
        {
            // Schema 7, where retention has pruned the newest deliveries (ids 2 and 3 were
            // given out and are gone).
            let conn = Connection::open(&path).unwrap();
            for sql in &MIGRATIONS[..7] {
                conn.execute_batch(sql).unwrap();
            }
            conn.pragma_update(None, "user_version", 7).unwrap();
            conn.execute_batch(
                "INSERT INTO events (id, type, payload, headers, created_at)
                     VALUES ('01a2200a-c31e-724e-b564-e1df5db6fbb0', 'order.created', '{}', '[]', 5);
                 INSERT INTO deliveries (id, event_id, target, status, next_attempt_at, updated_at)
                     VALUES (1, '01a2200a-c31e-724e-b564-e1df5db6fbb0', 'crm', 'pending', 5, 5),
                            (2, '01a2200a-c31e-724e-b564-e1df5db6fbb0', 'x', 'pending', 5, 5),
                            (3, '01a2200a-c31e-724e-b564-e1df5db6fbb0', 'y', 'pending', 5, 5);
                 DELETE FROM deliveries WHERE id > 1;",
            )
            .unwrap();
        }
        let s = SqliteStore::open_exclusive(&path).unwrap();
        let id: EventId = "01a2200a-c31e-724e-b564-e1df5db6fbb0".parse().unwrap();
        let cancelled = s.cancel(crate::store::EventRef::Id(id), 10).await.unwrap().unwrap();
        assert_eq!(cancelled.deliveries[0].status, DeliveryStatus::Cancelled);
        let later = s
            .ingest(vec![crate::store::conformance::event(None, &["crm"])], 20)
            .await
            .unwrap();
        let conn = Connection::open(&path).unwrap();
        let new_id: i64 = conn
            .query_row(
                "SELECT id FROM deliveries WHERE event_id = ?1",
                [later[0].id.to_string()],
                |r| r.get(0),
            )
            .unwrap();
        assert_eq!(new_id, 4, "ids 2 and 3 are not given out again");
        let indexes: i64 = conn
            .query_row(
                "SELECT count(*) FROM sqlite_master WHERE type = 'index' AND tbl_name = 'deliveries'
                     AND name LIKE 'deliveries_%'",
                [],
                |r| r.get(0),
            )
            .unwrap();
        assert_eq!(indexes, 4);
        let refused = conn.execute("UPDATE deliveries SET status = 'gone' WHERE id = 1", []);
        assert!(refused.is_err(), "the CHECK still holds");
    }
}
