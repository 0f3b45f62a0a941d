//! A source table in an SQLite file the application owns. The connection is opened
//! read-write without creating the file, with a busy timeout so that the application's
//! writers wait for the relay's short transactions instead of failing (and vice versa); the
//! journal mode and the schema are never changed. Every call runs on a blocking thread.

use std::sync::Arc;

use async_trait::async_trait;
use rusqlite::types::ValueRef;
use rusqlite::{Connection, OpenFlags, TransactionBehavior};

use super::config::{Location, OnRelayed, SourceConfig};
use super::mapping::{RowId, SourceRow};
use super::{Dialect, SourceDb, SourceError, quote, select_pending};

pub(crate) struct SqliteSource {
    config: Arc<SourceConfig>,
    conn: Option<Connection>,
    select: String,
    /// The same from a cursor (`?3`) on.
    select_after: String,
}

impl SqliteSource {
    pub(crate) fn new(config: Arc<SourceConfig>) -> Self {
        let dialect = Dialect {
            quote: '"',
            text: |column| column.to_owned(),
            null_text: "NULL",
            epoch_ms: |column| format!("CAST(unixepoch({column}, 'auto', 'subsec') * 1000 AS INTEGER)"),
            null_ms: "NULL",
            pending: "?1",
            pending_typed: "?1",
            limit: "?2",
        };
        // A text cursor compared with an INTEGER (or NUMERIC) column takes the column's
        // affinity, so it compares as a number.
        Self {
            select: select_pending(&config, &dialect, None),
            select_after: select_pending(&config, &dialect, Some("?3")),
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
    // A setting of this connection only; the application's database is not changed.
    crate::store::sqlite::stable_plans(&conn).map_err(|e| SourceError::Connect(e.to_string()))?;
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
    if columns.is_empty() {
        return Err(SourceError::MissingTable(config.table.clone()));
    }
    for c in config.columns.all().into_iter().chain([config.order_by.as_str()]) {
        if !columns.iter().any(|have| have.eq_ignore_ascii_case(c)) {
            return Err(SourceError::MissingColumn {
                table: config.table.clone(),
                column: c.to_owned(),
            });
        }
    }
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
        let after = after.map(str::to_owned);
        let sql = if after.is_some() {
            self.select_after.clone()
        } else {
            self.select.clone()
        };
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
                let bind = |r: &RowId| match r {
                    RowId::Int(i) => rusqlite::types::Value::Integer(*i),
                    RowId::Text(s) => rusqlite::types::Value::Text(s.clone()),
                };
                match (config.on_relayed, &status) {
                    (OnRelayed::Mark, Some(status)) => {
                        let mut st = tx
                            .prepare_cached(&format!("UPDATE {table} SET {status} = ?1 WHERE {id} = ?2"))
                            .map_err(q)?;
                        for r in &relayed {
                            st.execute(rusqlite::params![config.done_value, bind(r)]).map_err(q)?;
                        }
                        for r in &failed {
                            st.execute(rusqlite::params![config.failed_value, bind(r)]).map_err(q)?;
                        }
                    }
                    _ => {
                        let mut st = tx
                            .prepare_cached(&format!("DELETE FROM {table} WHERE {id} = ?1"))
                            .map_err(q)?;
                        for r in &relayed {
                            st.execute([bind(r)]).map_err(q)?;
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
