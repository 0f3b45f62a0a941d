//! A source table in PostgreSQL, through sqlx (no compile-time-checked queries: there is no
//! database at build time). One pooled connection for reading and marking, plus, when
//! `notify_channel` is set, a `LISTEN` connection that wakes the relay as soon as the
//! application (or a trigger) sends `NOTIFY`; polling stays the fallback. Ids are read as
//! text and cast back to the id column's own type in SQL, so lookups use its index.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use sqlx::Row as _;
use sqlx::postgres::{PgListener, PgPool, PgPoolOptions};

use super::config::{Location, OnRelayed, SourceConfig};
use super::mapping::{RowId, SourceRow};
use super::{Dialect, Reads, SourceDb, SourceError, check_columns, quote, sqlx_rows};

const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

pub(crate) struct PgSource {
    config: Arc<SourceConfig>,
    pool: Option<PgPool>,
    listener: Option<PgListener>,
    /// `UPDATE … WHERE id = ANY($2::text[]::<id type>[])`, set once connected.
    mark: String,
    delete: String,
    /// The cursor is `$3::text::<order_by type>`, known once connected.
    reads: Reads,
}

const POSTGRES: Dialect = Dialect {
    text: |column| format!("{column}::text"),
    null_text: "NULL::text",
    epoch_ms: |column| format!("(extract(epoch from {column}) * 1000)::bigint"),
    null_ms: "NULL::bigint",
    pending: "$1",
    pending_typed: "$1::text",
    limit: "$2",
    ..Dialect::PLAIN
};

fn url(config: &SourceConfig) -> &str {
    match &config.location {
        Location::Url(u) => u,
        Location::SqlitePath(_) => "",
    }
}

fn q(e: sqlx::Error) -> SourceError {
    SourceError::Query(e.to_string())
}

impl PgSource {
    pub(crate) fn new(config: Arc<SourceConfig>) -> Self {
        Self {
            reads: Reads::default(),
            config,
            pool: None,
            listener: None,
            mark: String::new(),
            delete: String::new(),
        }
    }

    async fn connect(&mut self) -> Result<PgPool, SourceError> {
        if let Some(p) = &self.pool {
            return Ok(p.clone());
        }
        let config = Arc::clone(&self.config);
        let pool = PgPoolOptions::new()
            .max_connections(1)
            .acquire_timeout(CONNECT_TIMEOUT)
            .connect(url(&config))
            .await
            .map_err(|e| SourceError::Connect(e.to_string()))?;
        let table = quote(&config.table, '"');
        let columns: Vec<(String, String)> = sqlx::query(
            "SELECT attname::text, format_type(atttypid, atttypmod) FROM pg_attribute \
             WHERE attrelid = to_regclass($1) AND attnum > 0 AND NOT attisdropped",
        )
        .bind(&table)
        .fetch_all(&pool)
        .await
        .map_err(q)?
        .into_iter()
        .map(|r| Ok((r.try_get::<String, _>(0)?, r.try_get::<String, _>(1)?)))
        .collect::<Result<_, sqlx::Error>>()
        .map_err(q)?;
        let names: Vec<String> = columns.iter().map(|(name, _)| name.clone()).collect();
        check_columns(&config, &names, |have, c| have == c)?;
        let id_type = columns
            .iter()
            .find(|(n, _)| n == &config.columns.id)
            .map(|(_, t)| t.clone())
            .unwrap_or_else(|| "text".into());
        let order_type = columns
            .iter()
            .find(|(n, _)| n == &config.order_by)
            .map(|(_, t)| t.clone())
            .unwrap_or_else(|| "text".into());
        self.reads = Reads::new(&config, &POSTGRES, &format!("$3::text::{order_type}"));
        let id = quote(&config.columns.id, '"');
        let cast = format!("ANY($2::text[]::{id_type}[])");
        if let Some(status) = &config.columns.status {
            self.mark = format!("UPDATE {table} SET {} = $1 WHERE {id} = {cast}", quote(status, '"'));
        }
        self.delete = format!("DELETE FROM {table} WHERE $1::text IS NOT NULL AND {id} = {cast}");
        if let Some(channel) = &config.notify_channel
            && self.listener.is_none()
        {
            match PgListener::connect(url(&config)).await {
                Ok(mut l) => match l.listen(channel).await {
                    Ok(()) => self.listener = Some(l),
                    Err(e) => tracing::warn!(source = %config.name, error = %e, "LISTEN failed; polling only"),
                },
                Err(e) => tracing::warn!(source = %config.name, error = %e, "LISTEN connection failed; polling only"),
            }
        }
        self.pool = Some(pool.clone());
        Ok(pool)
    }
}

fn texts(ids: &[RowId]) -> Vec<String> {
    ids.iter().map(ToString::to_string).collect()
}

#[async_trait]
impl SourceDb for PgSource {
    async fn fetch(&mut self, limit: usize, after: Option<&str>) -> Result<Vec<SourceRow>, SourceError> {
        let pool = self.connect().await?;
        let mut query = sqlx::query(self.reads.for_cursor(after))
            .bind(&self.config.pending_value)
            .bind(limit as i64);
        if let Some(after) = after {
            query = query.bind(after);
        }
        let rows = query.fetch_all(&pool).await.map_err(q)?;
        sqlx_rows(&rows)
    }

    async fn finish(&mut self, relayed: Vec<RowId>, failed: Vec<RowId>) -> Result<(), SourceError> {
        let pool = self.connect().await?;
        let mut tx = pool.begin().await.map_err(q)?;
        let c = &self.config;
        match c.on_relayed {
            OnRelayed::Mark => {
                for (value, ids) in [(&c.done_value, &relayed), (&c.failed_value, &failed)] {
                    if !ids.is_empty() {
                        sqlx::query(&self.mark)
                            .bind(value)
                            .bind(texts(ids))
                            .execute(&mut *tx)
                            .await
                            .map_err(q)?;
                    }
                }
            }
            OnRelayed::Delete => {
                if !relayed.is_empty() {
                    sqlx::query(&self.delete)
                        .bind("delete")
                        .bind(texts(&relayed))
                        .execute(&mut *tx)
                        .await
                        .map_err(q)?;
                }
            }
        }
        tx.commit().await.map_err(q)
    }

    async fn wait(&mut self, timeout: Duration) {
        let Some(listener) = &mut self.listener else {
            tokio::time::sleep(timeout).await;
            return;
        };
        match tokio::time::timeout(timeout, listener.recv()).await {
            Err(_) | Ok(Ok(_)) => {}
            Ok(Err(e)) => {
                tracing::warn!(source = %self.config.name, error = %e, "LISTEN connection lost; polling until it is back");
                self.listener = None;
            }
        }
    }

    fn reset(&mut self) {
        self.pool = None;
        self.listener = None;
    }
}
