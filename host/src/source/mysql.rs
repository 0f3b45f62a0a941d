//! A source table in MySQL or MariaDB, through sqlx (no compile-time-checked queries). One
//! pooled connection; every mapped column is read with `CAST(… AS CHAR)` so that JSON, text
//! and numeric columns all arrive as text, and rows are marked or deleted with one
//! `IN (…)` statement per batch in one transaction.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use sqlx::Row as _;
use sqlx::mysql::{MySqlPool, MySqlPoolOptions};

use super::config::{Location, OnRelayed, SourceConfig};
use super::mapping::{RowId, SourceRow};
use super::{Dialect, SourceDb, SourceError, quote, select_pending};

const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

pub(crate) struct MySource {
    config: Arc<SourceConfig>,
    pool: Option<MySqlPool>,
    select: String,
    /// The same from a cursor on (bound between the pending value and the limit).
    select_after: String,
}

fn q(e: sqlx::Error) -> SourceError {
    SourceError::Query(e.to_string())
}

impl MySource {
    pub(crate) fn new(config: Arc<SourceConfig>) -> Self {
        let dialect = Dialect {
            quote: '`',
            text: |column| format!("CAST({column} AS CHAR)"),
            null_text: "NULL",
            epoch_ms: |column| format!("CAST(UNIX_TIMESTAMP({column}) * 1000 AS SIGNED)"),
            null_ms: "NULL",
            pending: "?",
            pending_typed: "?",
            limit: "?",
        };
        // MySQL converts the text cursor to the column's type for the comparison.
        Self {
            select: select_pending(&config, &dialect, None),
            select_after: select_pending(&config, &dialect, Some("?")),
            config,
            pool: None,
        }
    }

    async fn connect(&mut self) -> Result<MySqlPool, SourceError> {
        if let Some(p) = &self.pool {
            return Ok(p.clone());
        }
        let config = &self.config;
        let Location::Url(url) = &config.location else {
            return Err(SourceError::Connect("not a MySQL source".into()));
        };
        let pool = MySqlPoolOptions::new()
            .max_connections(1)
            .acquire_timeout(CONNECT_TIMEOUT)
            .connect(url)
            .await
            .map_err(|e| SourceError::Connect(e.to_string()))?;
        let (schema, table) = match config.table.split_once('.') {
            Some((s, t)) => (Some(s.to_owned()), t.to_owned()),
            None => (None, config.table.clone()),
        };
        let columns: Vec<String> = sqlx::query(
            "SELECT CAST(COLUMN_NAME AS CHAR) FROM information_schema.COLUMNS \
             WHERE TABLE_SCHEMA = COALESCE(?, DATABASE()) AND TABLE_NAME = ?",
        )
        .bind(schema)
        .bind(table)
        .fetch_all(&pool)
        .await
        .map_err(q)?
        .into_iter()
        .map(|r| r.try_get::<String, _>(0))
        .collect::<Result<_, sqlx::Error>>()
        .map_err(q)?;
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
        self.pool = Some(pool.clone());
        Ok(pool)
    }
}

fn placeholders(n: usize) -> String {
    vec!["?"; n].join(", ")
}

#[async_trait]
impl SourceDb for MySource {
    async fn fetch(&mut self, limit: usize, after: Option<&str>) -> Result<Vec<SourceRow>, SourceError> {
        let pool = self.connect().await?;
        let query = match after {
            Some(after) => sqlx::query(&self.select_after)
                .bind(&self.config.pending_value)
                .bind(after),
            None => sqlx::query(&self.select).bind(&self.config.pending_value),
        };
        let rows = query.bind(limit as u64).fetch_all(&pool).await.map_err(q)?;
        rows.into_iter()
            .map(|r| {
                Ok(SourceRow {
                    id: r.try_get::<Option<String>, _>(0)?.map(RowId::Text),
                    event_type: r.try_get(1)?,
                    payload: r.try_get(2)?,
                    headers: r.try_get(3)?,
                    idempotency_key: r.try_get(4)?,
                    ordering_key: r.try_get(5)?,
                    aggregate_type: r.try_get(6)?,
                    created_at_ms: r.try_get(7)?,
                    order_value: r.try_get(8)?,
                })
            })
            .collect::<Result<_, sqlx::Error>>()
            .map_err(q)
    }

    async fn finish(&mut self, relayed: Vec<RowId>, failed: Vec<RowId>) -> Result<(), SourceError> {
        let pool = self.connect().await?;
        let c = Arc::clone(&self.config);
        let table = quote(&c.table, '`');
        let id = quote(&c.columns.id, '`');
        let mut tx = pool.begin().await.map_err(q)?;
        match (c.on_relayed, &c.columns.status) {
            (OnRelayed::Mark, Some(status)) => {
                let status = quote(status, '`');
                for (value, ids) in [(&c.done_value, &relayed), (&c.failed_value, &failed)] {
                    if ids.is_empty() {
                        continue;
                    }
                    let sql = format!(
                        "UPDATE {table} SET {status} = ? WHERE {id} IN ({})",
                        placeholders(ids.len())
                    );
                    let mut query = sqlx::query(&sql).bind(value);
                    for i in ids {
                        query = query.bind(i.to_string());
                    }
                    query.execute(&mut *tx).await.map_err(q)?;
                }
            }
            _ => {
                if !relayed.is_empty() {
                    let sql = format!("DELETE FROM {table} WHERE {id} IN ({})", placeholders(relayed.len()));
                    let mut query = sqlx::query(&sql);
                    for i in &relayed {
                        query = query.bind(i.to_string());
                    }
                    query.execute(&mut *tx).await.map_err(q)?;
                }
            }
        }
        tx.commit().await.map_err(q)
    }

    fn reset(&mut self) {
        self.pool = None;
    }
}
