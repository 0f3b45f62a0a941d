//! A source table in an SQLite file the application owns. The connection is opened
//! read-write without creating the file, with a busy timeout so that the application's
//! writers wait for the relay's short transactions instead of failing (and vice versa); the
//! journal mode and the schema are never changed. Every call runs on a blocking thread.
//!
//! The relay's write transaction, the marking (or deleting) of a batch, is kept as short as
//! it can be, since the application's writers wait for it: one statement over the batch's
//! ids (`rarray`), and, when the application runs in WAL mode, no fsync of its own at commit
//! (`synchronous = NORMAL` on this connection only). A marking lost to a power cut is safe:
//! the row is read again, found in the store by its idempotency key and only marked.

use std::sync::Arc;

use async_trait::async_trait;
use rusqlite::types::ValueRef;
use rusqlite::{Connection, OpenFlags, TransactionBehavior};

use super::config::{Location, OnRelayed, SourceConfig};
use super::mapping::{RowId, SourceRow};
use super::{Dialect, Reads, SourceDb, SourceError, check_columns, quote};

pub(crate) struct SqliteSource {
    config: Arc<SourceConfig>,
    conn: Option<Connection>,
    /// The cursor is `?3`.
    reads: Reads,
}

const SQLITE: Dialect = Dialect {
    epoch_ms: |column| format!("CAST(unixepoch({column}, 'auto', 'subsec') * 1000 AS INTEGER)"),
    pending: "?1",
    pending_typed: "?1",
    limit: "?2",
    ..Dialect::PLAIN
};

impl SqliteSource {
    pub(crate) fn new(config: Arc<SourceConfig>) -> Self {
        // A text cursor compared with an INTEGER (or NUMERIC) column takes the column's
        // affinity, so it compares as a number.
        Self {
            reads: Reads::new(&config, &SQLITE, "?3"),
            config,
            conn: None,
        }
    }

    /// Runs `f` with the connection on a blocking thread, connecting first if needed.
    async fn with_conn<R: Send + 'static>(
        &mut self,
        f: impl FnOnce(&mut Connection, &SourceConfig) -> Result<R, SourceError> + Send + 'static,
    ) -> Result<R, SourceError> {
        let config = Arc::clone(&self.config);
        let conn = self.conn.take();
        let (conn, result) = tokio::task::spawn_blocking(move || {
            let mut conn = match conn {
                Some(c) => c,
                None => match connect(&config) {
                    Ok(c) => c,
                    Err(e) => return (None, Err(e)),
                },
            };
            let r = f(&mut conn, &config);
            (Some(conn), r)
        })
        .await
        .map_err(|e| SourceError::Task(e.to_string()))?;
        self.conn = conn;
        result
    }
}

fn connect(config: &SourceConfig) -> Result<Connection, SourceError> {
    let Location::SqlitePath(path) = &config.location else {
        return Err(SourceError::Connect("not an SQLite source".into()));
    };
    let conn = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX | OpenFlags::SQLITE_OPEN_URI,
    )
    .map_err(|e| SourceError::Connect(format!("{}: {e}", path.display())))?;
    conn.busy_timeout(config.busy_timeout)
        .map_err(|e| SourceError::Connect(e.to_string()))?;
    // Settings of this connection only; the application's database is not changed.
    let c = |e: rusqlite::Error| SourceError::Connect(e.to_string());
    crate::store::sqlite::stable_plans(&conn).map_err(c)?;
    rusqlite::vtab::array::load_module(&conn).map_err(c)?;
    let journal_mode: String = conn.query_row("PRAGMA journal_mode", [], |r| r.get(0)).map_err(c)?;
    if journal_mode.eq_ignore_ascii_case("wal") {
        // In WAL mode a commit without fsync cannot corrupt the file; it can only be lost to
        // a power cut, which the idempotency key makes harmless (see the module's comment).
        // In a rollback-journal mode it could corrupt, so the default stays there.
        conn.pragma_update(None, "synchronous", "NORMAL").map_err(c)?;
    }
    let (schema, table) = match config.table.split_once('.') {
        Some((s, t)) => (s.to_owned(), t.to_owned()),
        None => ("main".to_owned(), config.table.clone()),
    };
    let mut stmt = conn
        .prepare("SELECT name FROM pragma_table_info(?1, ?2)")
        .map_err(|e| SourceError::Query(e.to_string()))?;
    let columns: Vec<String> = stmt
        .query_map([&table, &schema], |r| r.get(0))
        .and_then(|rows| rows.collect())
        .map_err(|e| SourceError::Query(e.to_string()))?;
    drop(stmt);
    check_columns(config, &columns, |have, c| have.eq_ignore_ascii_case(c))?;
    Ok(conn)
}

fn text(v: ValueRef<'_>) -> Option<String> {
    match v {
        ValueRef::Null => None,
        ValueRef::Integer(i) => Some(i.to_string()),
        ValueRef::Real(f) => Some(f.to_string()),
        ValueRef::Text(t) | ValueRef::Blob(t) => Some(String::from_utf8_lossy(t).into_owned()),
    }
}

#[async_trait]
impl SourceDb for SqliteSource {
    async fn fetch(&mut self, limit: usize, after: Option<&str>) -> Result<Vec<SourceRow>, SourceError> {
        let sql = self.reads.for_cursor(after).to_owned();
        let after = after.map(str::to_owned);
        self.with_conn(move |conn, config| {
            let q = |e: rusqlite::Error| SourceError::Query(e.to_string());
            let mut stmt = conn.prepare_cached(&sql).map_err(q)?;
            let limit = limit as i64;
            let mut rows = match &after {
                Some(after) => stmt.query(rusqlite::params![config.pending_value, limit, after]),
                None => stmt.query(rusqlite::params![config.pending_value, limit]),
            }
            .map_err(q)?;
            let mut out = Vec::new();
            while let Some(r) = rows.next().map_err(q)? {
                let v = |i: usize| r.get_ref(i).map(text).map_err(q);
                let id = match r.get_ref(0).map_err(q)? {
                    ValueRef::Null => None,
                    ValueRef::Integer(i) => Some(RowId::Int(i)),
                    other => text(other).map(RowId::Text),
                };
                out.push(SourceRow {
                    id,
                    event_type: v(1)?,
                    payload: v(2)?,
                    headers: v(3)?,
                    idempotency_key: v(4)?,
                    ordering_key: v(5)?,
                    aggregate_type: v(6)?,
                    created_at_ms: r.get::<_, Option<i64>>(7).map_err(q)?,
                    order_value: v(8)?,
                    deliver_at: v(9)?,
                    deliver_at_ms: r.get::<_, Option<i64>>(10).map_err(q)?,
                    traceparent: v(11)?,
                });
            }
            Ok(out)
        })
        .await
    }

    async fn finish(&mut self, relayed: Vec<RowId>, failed: Vec<RowId>) -> Result<(), SourceError> {
        self.with_conn(move |conn, config| {
            let q = |e: rusqlite::Error| SourceError::Query(e.to_string());
            let table = quote(&config.table, '"');
            let id = quote(&config.columns.id, '"');
            let status = config.columns.status.as_deref().map(|s| quote(s, '"'));
            let tx = conn
                .transaction_with_behavior(TransactionBehavior::Immediate)
                .map_err(q)?;
            {
                let ids = |rows: &[RowId]| -> rusqlite::vtab::array::Array {
                    std::rc::Rc::new(
                        rows.iter()
                            .map(|r| match r {
                                RowId::Int(i) => rusqlite::types::Value::Integer(*i),
                                RowId::Text(s) => rusqlite::types::Value::Text(s.clone()),
                            })
                            .collect(),
                    )
                };
                match (config.on_relayed, &status) {
                    (OnRelayed::Mark, Some(status)) => {
                        let mut st = tx
                            .prepare_cached(&format!("UPDATE {table} SET {status} = ?1 WHERE {id} IN rarray(?2)"))
                            .map_err(q)?;
                        if !relayed.is_empty() {
                            st.execute(rusqlite::params![config.done_value, ids(&relayed)])
                                .map_err(q)?;
                        }
                        if !failed.is_empty() {
                            st.execute(rusqlite::params![config.failed_value, ids(&failed)])
                                .map_err(q)?;
                        }
                    }
                    _ => {
                        let mut st = tx
                            .prepare_cached(&format!("DELETE FROM {table} WHERE {id} IN rarray(?1)"))
                            .map_err(q)?;
                        if !relayed.is_empty() {
                            st.execute([ids(&relayed)]).map_err(q)?;
                        }
                    }
                }
            }
            tx.commit().map_err(q)
        })
        .await
    }

    fn reset(&mut self) {
        self.conn = None;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::source::config::SourceFile;

    fn source(dir: &std::path::Path, extra: &str) -> SqliteSource {
        let text = format!("name = \"app\"\nkind = \"sqlite\"\npath = \"app.db\"\n{extra}");
        let file: SourceFile = toml::from_str(&text).unwrap();
        SqliteSource::new(Arc::new(SourceConfig::from_file(file, dir).unwrap()))
    }

    fn app_db(dir: &std::path::Path, id_type: &str, ids: &[&str]) -> Connection {
        let conn = Connection::open(dir.join("app.db")).unwrap();
        conn.execute_batch(&format!(
            "PRAGMA journal_mode = WAL;
             CREATE TABLE outbox (id {id_type} PRIMARY KEY, event_type TEXT, payload TEXT,
                                  status TEXT NOT NULL DEFAULT 'pending');"
        ))
        .unwrap();
        for id in ids {
            conn.execute(
                "INSERT INTO outbox (id, event_type, payload) VALUES (?1, 'order.created', '{}')",
                [id],
            )
            .unwrap();
        }
        conn
    }

    fn statuses(conn: &Connection) -> Vec<(String, String)> {
        let mut st = conn
            .prepare("SELECT CAST(id AS TEXT), status FROM outbox ORDER BY id")
            .unwrap();
        st.query_map([], |r| r.try_into())
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap()
    }

    #[tokio::test]
    async fn a_batch_is_marked_in_one_statement_by_integer_or_text_id() {
        let dir = tempfile::tempdir().unwrap();
        let app = app_db(dir.path(), "INTEGER", &["1", "2", "3", "4"]);
        let mut s = source(dir.path(), "");
        assert_eq!(s.fetch(10, None).await.unwrap().len(), 4);
        s.finish(vec![RowId::Int(1), RowId::Int(3)], vec![RowId::Int(4)])
            .await
            .unwrap();
        let want = [("1", "done"), ("2", "pending"), ("3", "done"), ("4", "failed")];
        let want: Vec<_> = want.iter().map(|(a, b)| (a.to_string(), b.to_string())).collect();
        assert_eq!(statuses(&app), want);

        let dir = tempfile::tempdir().unwrap();
        let app = app_db(dir.path(), "TEXT", &["a-1", "b-2", "c-3"]);
        let mut s = source(dir.path(), "");
        s.finish(vec![RowId::Text("b-2".into())], vec![]).await.unwrap();
        let want = [("a-1", "pending"), ("b-2", "done"), ("c-3", "pending")];
        let want: Vec<_> = want.iter().map(|(a, b)| (a.to_string(), b.to_string())).collect();
        assert_eq!(statuses(&app), want);
    }

    #[tokio::test]
    async fn delete_mode_deletes_the_relayed_rows_and_leaves_bad_ones() {
        let dir = tempfile::tempdir().unwrap();
        let app = app_db(dir.path(), "INTEGER", &["1", "2", "3"]);
        let mut s = source(dir.path(), "on_relayed = \"delete\"\n[columns]\nstatus = \"\"");
        s.finish(vec![RowId::Int(1), RowId::Int(2)], vec![RowId::Int(3)])
            .await
            .unwrap();
        assert_eq!(statuses(&app), vec![("3".to_string(), "pending".to_string())]);
    }

    #[tokio::test]
    async fn the_relay_connection_skips_fsync_only_in_wal_mode() {
        let dir = tempfile::tempdir().unwrap();
        drop(app_db(dir.path(), "INTEGER", &[]));
        let config = source(dir.path(), "").config;
        let sync = |c: &Connection| c.query_row("PRAGMA synchronous", [], |r| r.get::<_, i64>(0)).unwrap();
        assert_eq!(sync(&connect(&config).unwrap()), 1, "NORMAL in WAL mode");

        let dir = tempfile::tempdir().unwrap();
        let conn = Connection::open(dir.path().join("app.db")).unwrap();
        conn.execute_batch("CREATE TABLE outbox (id INTEGER PRIMARY KEY, event_type TEXT, payload TEXT, status TEXT)")
            .unwrap();
        let config = source(dir.path(), "").config;
        assert_eq!(
            sync(&connect(&config).unwrap()),
            2,
            "FULL (the default) in rollback mode"
        );
    }
}
