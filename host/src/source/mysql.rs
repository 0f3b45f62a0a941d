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
use super::{Dialect, Reads, SourceDb, SourceError, check_columns, quote, sqlx_rows};

const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

pub(crate) struct MySource {
    config: Arc<SourceConfig>,
    pool: Option<MySqlPool>,
    /// The cursor is bound between the pending value and the limit.
    reads: Reads,
}

fn q(e: sqlx::Error) -> SourceError {
    SourceError::Query(e.to_string())
}

const MYSQL: Dialect = Dialect {
    quote: '`',
    text: |column| format!("CAST({column} AS CHAR)"),
    epoch_ms: |column| format!("CAST(UNIX_TIMESTAMP({column}) * 1000 AS SIGNED)"),
    ..Dialect::PLAIN
};

impl MySource {
    pub(crate) fn new(config: Arc<SourceConfig>) -> Self {
        // MySQL converts the text cursor to the column's type for the comparison.
        Self {
            reads: Reads::new(&config, &MYSQL, "?"),
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
        check_columns(config, &columns, |have, c| have.eq_ignore_ascii_case(c))?;
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
        let mut query = sqlx::query(self.reads.for_cursor(after)).bind(&self.config.pending_value);
        if let Some(after) = after {
            query = query.bind(after);
        }
        let rows = query.bind(limit as u64).fetch_all(&pool).await.map_err(q)?;
        sqlx_rows(&rows)
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
