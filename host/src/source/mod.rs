//! Sources: relaying an application's own outbox table (SQLite, PostgreSQL, MySQL/MariaDB)
//! into outboxd. One task per `[[sources]]` entry reads pending rows in `order_by` order, in
//! batches; validates each row into an event ([`mapping`]); commits the good ones through
//! the front door ([`Outbox::accept`]) with a producer idempotency key derived from the source and the row id;
//! and only then marks (or deletes) the rows, in one short transaction of the application's
//! database, on a second connection while the next batch is read and stored (the two
//! databases' commits overlap; markings stay in order). A backlog is read from a cursor on
//! `order_by`. A crash in between re-reads the rows, finds their events by key, and only
//! marks them: each row becomes at most one event. A bad row is marked failed (or, in delete
//! mode, skipped), never lost and never blocking; a database error is retried with backoff
//! without touching any other source. [`Sources`] is the per-source status the API shows.

pub mod config;
pub mod mapping;
mod mysql;
mod postgres;
mod sqlite;

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use thiserror::Error;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::domain::{Millis, now_ms};
use crate::outbox::Outbox;
use crate::store::StoreError;

pub use config::{OnRelayed, SourceConfig, SourceKind};
use mapping::{RowId, SourceRow};

/// Why one relay cycle of a source failed. The source retries with backoff.
#[derive(Debug, Error)]
pub enum SourceError {
    #[error("cannot connect: {0}")]
    Connect(String),
    #[error("table `{0}` does not exist")]
    MissingTable(String),
    #[error("table `{table}` has no column `{column}`")]
    MissingColumn { table: String, column: String },
    #[error("query failed: {0}")]
    Query(String),
    #[error("outboxd's store: {0}")]
    Store(#[from] StoreError),
    #[error("relay task failed: {0}")]
    Task(String),
}

/// Where a source's relay is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SourceState {
    /// Not polled yet.
    Starting,
    /// The last cycle succeeded.
    Relaying,
    /// The last cycle failed; retrying with backoff.
    Failing,
}

impl SourceState {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Starting => "starting",
            Self::Relaying => "relaying",
            Self::Failing => "failing",
        }
    }
}

/// A message with when it happened.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stamped {
    pub message: String,
    pub at: Millis,
}

/// What `GET /v1/sources` shows of one source. Counters start at zero with the process.
#[derive(Debug, Clone)]
pub struct SourceStatus {
    pub name: String,
    pub kind: SourceKind,
    pub table: String,
    pub schema: config::SchemaPreset,
    pub on_relayed: OnRelayed,
    pub state: SourceState,
    /// Rows that became events (or were found to be events already) and were marked/deleted.
    pub rows_relayed: u64,
    /// Of those, rows whose event already existed (re-read after a crash, or a repeated
    /// application idempotency key).
    pub rows_duplicate: u64,
    /// Rows refused as events (bad JSON, bad type, …).
    pub rows_failed: u64,
    /// Age of the oldest row still pending at the last poll (0 when none was).
    pub lag_ms: Option<i64>,
    pub last_poll_at: Option<Millis>,
    pub last_error: Option<Stamped>,
    /// The last row refused, `<id>: <reason>`.
    pub last_bad_row: Option<Stamped>,
}

/// The status of every configured source, shared by the relays and the API.
#[derive(Debug, Default)]
pub struct Sources {
    entries: Vec<Arc<Mutex<SourceStatus>>>,
}

impl Sources {
    /// A copy of every source's status, in configuration order.
    pub fn snapshot(&self) -> Vec<SourceStatus> {
        self.entries
            .iter()
            .map(|e| e.lock().unwrap_or_else(|p| p.into_inner()).clone())
            .collect()
    }
}

fn update(status: &Mutex<SourceStatus>, f: impl FnOnce(&mut SourceStatus)) {
    f(&mut status.lock().unwrap_or_else(|p| p.into_inner()));
}

/// One source's database: reading pending rows and recording what became of them.
#[async_trait]
pub(crate) trait SourceDb: Send {
    /// Up to `limit` pending rows, in `order_by` order; with `after`, only rows whose
    /// `order_by` value is at least that one (a [`SourceRow::order_value`] read before).
    /// Connects (and checks that the table and every mapped column exist) when not connected.
    async fn fetch(&mut self, limit: usize, after: Option<&str>) -> Result<Vec<SourceRow>, SourceError>;
    /// In one transaction: `relayed` rows marked done (or deleted), `failed` rows marked
    /// failed (mark mode only).
    async fn finish(&mut self, relayed: Vec<RowId>, failed: Vec<RowId>) -> Result<(), SourceError>;
    /// Waits up to `timeout` for new rows (PostgreSQL: a notification), or just sleeps.
    async fn wait(&mut self, timeout: Duration) {
        tokio::time::sleep(timeout).await;
    }
    /// Drops the connection after an error; the next fetch reconnects.
    fn reset(&mut self);
}

fn open(config: Arc<SourceConfig>) -> Box<dyn SourceDb> {
    match config.kind {
        SourceKind::Sqlite => Box::new(sqlite::SqliteSource::new(config)),
        SourceKind::Postgres => Box::new(postgres::PgSource::new(config)),
        SourceKind::Mysql => Box::new(mysql::MySource::new(config)),
    }
}

/// What a relay needs from the service.
#[derive(Clone)]
pub struct RelayContext {
    /// The front door the relayed events go through.
    pub outbox: Outbox,
    pub max_payload_bytes: usize,
}

/// Starts one relay task per source. The tasks end when `stop` is cancelled (between
/// cycles: a cycle that started finishes).
pub fn spawn_all(
    configs: &[SourceConfig],
    ctx: RelayContext,
    stop: CancellationToken,
) -> (Arc<Sources>, Vec<JoinHandle<()>>) {
    let mut sources = Sources::default();
    let mut tasks = Vec::new();
    for c in configs {
        let status = Arc::new(Mutex::new(SourceStatus {
            name: c.name.clone(),
            kind: c.kind,
            table: c.table.clone(),
            schema: c.schema,
            on_relayed: c.on_relayed,
            state: SourceState::Starting,
            rows_relayed: 0,
            rows_duplicate: 0,
            rows_failed: 0,
            lag_ms: None,
            last_poll_at: None,
            last_error: None,
            last_bad_row: None,
        }));
        sources.entries.push(Arc::clone(&status));
        let config = Arc::new(c.clone());
        let relay = Relay {
            db: open(Arc::clone(&config)),
            marker: Some(open(Arc::clone(&config))),
            marking: None,
            config,
            ctx: ctx.clone(),
            status,
            skipped: HashSet::new(),
            behind_since: None,
            cursor: None,
        };
        tasks.push(tokio::spawn(relay.run(stop.clone())));
    }
    (Arc::new(sources), tasks)
}

/// Backoff after the `n`th consecutive failure (1-based): 100 ms doubling, at most 30 s.
pub fn backoff(n: u32) -> Duration {
    Duration::from_millis(100u64.saturating_mul(1 << n.saturating_sub(1).min(9)).min(30_000))
}

/// What one cycle did.
#[derive(Debug, Default, PartialEq, Eq)]
struct Cycle {
    /// Rows read (skipped bad rows not counted).
    read: usize,
}

/// A batch being marked (or deleted) in the application's database, in a task of its own, while
/// the relay reads and stores the next batch.
struct Marking {
    /// The rows being marked, which the next read must not relay again.
    ids: HashSet<String>,
    relayed: u64,
    duplicates: u64,
    failed: u64,
    task: JoinHandle<(Box<dyn SourceDb>, Result<(), SourceError>)>,
}

struct Relay {
    config: Arc<SourceConfig>,
    /// Reads pending rows.
    db: Box<dyn SourceDb>,
    /// Marks or deletes relayed rows, on a connection of its own; `None` while a marking runs.
    marker: Option<Box<dyn SourceDb>>,
    marking: Option<Marking>,
    ctx: RelayContext,
    status: Arc<Mutex<SourceStatus>>,
    /// Delete mode: bad rows left in place, not read again by this process.
    skipped: HashSet<String>,
    /// Without a `created_at` column: since when every poll has found rows pending.
    behind_since: Option<Millis>,
    /// While a backlog is read batch after batch: the `order_by` value of the last row read.
    /// Dropped when a read finds fewer rows than a batch (caught up) or fails, so that the next
    /// read starts from the beginning again and finds rows committed late with lower values.
    cursor: Option<String>,
}

impl Relay {
    async fn run(mut self, stop: CancellationToken) {
        let name = self.config.name.clone();
        tracing::info!(source = %name, kind = self.config.kind.as_str(), table = %self.config.table, "relaying source");
        let mut failures = 0u32;
        while !stop.is_cancelled() {
            let limit = self.config.batch_size as usize;
            let pause = match self.cycle(limit).await {
                Ok(c) => {
                    if failures > 0 {
                        tracing::info!(source = %name, "source recovered");
                    }
                    failures = 0;
                    update(&self.status, |s| s.state = SourceState::Relaying);
                    if c.read >= limit {
                        continue;
                    }
                    // Caught up: finish the last marking before waiting.
                    match self.finish_marking().await {
                        Ok(()) => None,
                        Err(e) => Some(self.failed(e, &mut failures)),
                    }
                }
                Err(e) => Some(self.failed(e, &mut failures)),
            };
            match pause {
                Some(wait) => {
                    tokio::select! {
                        _ = stop.cancelled() => break,
                        _ = tokio::time::sleep(wait) => {}
                    }
                }
                None => {
                    let poll = self.config.poll_interval;
                    tokio::select! {
                        _ = stop.cancelled() => break,
                        _ = self.db.wait(poll) => {}
                    }
                }
            }
        }
        if let Err(e) = self.finish_marking().await {
            tracing::warn!(source = %name, error = %e, "the last marking failed; its rows are relayed again (as duplicates) at the next start");
        }
        tracing::debug!(source = %name, "source relay stopped");
    }

    /// Records a failed cycle and returns the backoff before the next one.
    fn failed(&mut self, e: SourceError, failures: &mut u32) -> Duration {
        let name = &self.config.name;
        *failures += 1;
        self.cursor = None;
        self.db.reset();
        if let Some(m) = self.marker.as_mut() {
            m.reset();
        }
        let wait = backoff(*failures);
        tracing::warn!(source = %name, error = %e, retry_in_ms = wait.as_millis() as u64, "source relay failed");
        update(&self.status, |s| {
            s.state = SourceState::Failing;
            s.last_error = Some(Stamped {
                message: e.to_string(),
                at: now_ms(),
            });
        });
        wait
    }

    /// Waits for the marking in progress, if any, and counts its rows.
    async fn finish_marking(&mut self) -> Result<(), SourceError> {
        let Some(m) = self.marking.take() else {
            return Ok(());
        };
        let (marker, result) = match m.task.await {
            Ok(done) => done,
            Err(e) => {
                // The task panicked and took the connection with it: open a new one.
                self.marker = Some(open(Arc::clone(&self.config)));
                return Err(SourceError::Task(e.to_string()));
            }
        };
        self.marker = Some(marker);
        result?;
        update(&self.status, |s| {
            s.rows_relayed += m.relayed;
            s.rows_duplicate += m.duplicates;
            s.rows_failed += m.failed;
        });
        Ok(())
    }

    /// Starts marking (or deleting) a batch whose events are committed, in a task, so that the
    /// next batch is read and stored meanwhile.
    fn start_marking(&mut self, good: Vec<RowId>, bad: Vec<RowId>, duplicates: u64, failed: u64) {
        let ids = good.iter().chain(&bad).map(ToString::to_string).collect();
        let mut marker = self.marker.take().unwrap_or_else(|| open(Arc::clone(&self.config)));
        let relayed = good.len() as u64;
        let task = tokio::spawn(async move {
            let result = if good.is_empty() && bad.is_empty() {
                Ok(())
            } else {
                marker.finish(good, bad).await
            };
            (marker, result)
        });
        self.marking = Some(Marking {
            ids,
            relayed,
            duplicates,
            failed,
            task,
        });
    }

    /// Reads one batch, stores its events, then starts marking its rows; the marking of the
    /// previous batch, which ran meanwhile, is finished first, so markings keep their order.
    async fn cycle(&mut self, limit: usize) -> Result<Cycle, SourceError> {
        let started = std::time::Instant::now();
        let in_marking = self.marking.as_ref().map_or(0, |m| m.ids.len());
        let rows = self
            .db
            .fetch(limit + self.skipped.len() + in_marking, self.cursor.as_deref())
            .await?;
        let fetched = started.elapsed();
        let polled_at = now_ms();
        let marking = self.marking.as_ref().map(|m| &m.ids);
        let rows: Vec<SourceRow> = rows
            .into_iter()
            .filter(|r| {
                r.id.as_ref().is_none_or(|id| {
                    let id = id.to_string();
                    !self.skipped.contains(&id) && !marking.is_some_and(|m| m.contains(&id))
                })
            })
            .take(limit)
            .collect();
        let lag = match rows.first() {
            None => {
                self.behind_since = None;
                0
            }
            Some(first) => {
                let since = *self.behind_since.get_or_insert(polled_at);
                polled_at - first.created_at_ms.unwrap_or(since)
            }
        };

        let mut good_ids = Vec::with_capacity(rows.len());
        let mut accepted = Vec::with_capacity(rows.len());
        let mut bad_ids = Vec::new();
        let mut last_bad = None;
        for row in &rows {
            let Some(id) = row.id.clone() else {
                // A NULL id cannot be marked or deleted; nothing to do but say so.
                last_bad = Some("(NULL id): the id column is NULL".to_owned());
                continue;
            };
            match mapping::to_event(&self.config.name, row, self.ctx.max_payload_bytes) {
                Ok(a) => {
                    good_ids.push(id);
                    accepted.push(a);
                }
                Err(reason) => {
                    tracing::warn!(source = %self.config.name, row = %id, %reason, "source row refused");
                    last_bad = Some(format!("{id}: {reason}"));
                    bad_ids.push(id);
                }
            }
        }

        let mut duplicates = 0;
        if !accepted.is_empty() {
            let ingested = self.ctx.outbox.relay(accepted, &self.config.name).await?;
            duplicates = ingested.iter().filter(|i| i.duplicate).count() as u64;
        }
        let stored = started.elapsed();
        // The events are committed: from here a crash only repeats the marking.
        self.finish_marking().await?;
        let waited = started.elapsed();
        let failed_count = bad_ids.len() as u64;
        let failed_to_mark = match self.config.on_relayed {
            OnRelayed::Mark => bad_ids,
            OnRelayed::Delete => {
                self.skipped.extend(bad_ids.iter().map(ToString::to_string));
                Vec::new()
            }
        };
        if !good_ids.is_empty() || !failed_to_mark.is_empty() || failed_count > 0 {
            self.start_marking(good_ids, failed_to_mark, duplicates, failed_count);
        }
        if !rows.is_empty() {
            let ms = |d: Duration| d.as_secs_f64() * 1000.0;
            tracing::debug!(
                source = %self.config.name, rows = rows.len(),
                fetch_ms = ms(fetched), store_ms = ms(stored - fetched), wait_for_marking_ms = ms(waited - stored),
                "relay cycle"
            );
        }
        crate::telemetry::metrics::source_lag(&self.config.name, Duration::from_millis(lag.max(0) as u64));
        update(&self.status, |s| {
            s.lag_ms = Some(lag.max(0));
            s.last_poll_at = Some(polled_at);
            if let Some(m) = last_bad {
                s.last_bad_row = Some(Stamped {
                    message: m,
                    at: polled_at,
                });
            }
        });
        if rows.len() < limit {
            // Everything pending was read: caught up.
            self.behind_since = None;
            self.cursor = None;
        } else {
            self.cursor = rows.last().and_then(|r| r.order_value.clone());
        }
        Ok(Cycle { read: rows.len() })
    }
}

/// `"name"` / `"schema"."name"` (SQLite, PostgreSQL) or with backquotes (MySQL). Only for
/// names that passed [`config::valid_identifier`], which contain no quote characters.
/// How one database spells the parts of a relay's read query.
pub(crate) struct Dialect {
    /// The identifier quote character.
    pub quote: char,
    /// A column read as text; its argument is the quoted column.
    pub text: fn(&str) -> String,
    /// What an unmapped optional text column reads as.
    pub null_text: &'static str,
    /// Milliseconds since the epoch of a timestamp column; its argument is the quoted column.
    pub epoch_ms: fn(&str) -> String,
    /// What an unmapped `created_at` reads as.
    pub null_ms: &'static str,
    /// The pending value's placeholder, as compared with the status column.
    pub pending: &'static str,
    /// The same placeholder where its type cannot be inferred (`… IS NOT NULL`).
    pub pending_typed: &'static str,
    /// The batch size's placeholder.
    pub limit: &'static str,
}

impl Dialect {
    /// Positional `?` placeholders, plain `NULL`s, double-quoted identifiers read as they are:
    /// what a dialect does not say otherwise.
    pub(crate) const PLAIN: Dialect = Dialect {
        quote: '"',
        text: |column| column.to_owned(),
        null_text: "NULL",
        epoch_ms: |column| column.to_owned(),
        null_ms: "NULL",
        pending: "?",
        pending_typed: "?",
        limit: "?",
    };
}

/// Checks that the source table (whose column names are `columns`) has every mapped column
/// and the `order_by` one; `same` compares a name of the table with a configured one.
pub(crate) fn check_columns(
    config: &SourceConfig,
    columns: &[String],
    same: fn(&str, &str) -> bool,
) -> Result<(), SourceError> {
    if columns.is_empty() {
        return Err(SourceError::MissingTable(config.table.clone()));
    }
    for c in config.columns.all().into_iter().chain([config.order_by.as_str()]) {
        if !columns.iter().any(|have| same(have, c)) {
            return Err(SourceError::MissingColumn {
                table: config.table.clone(),
                column: c.to_owned(),
            });
        }
    }
    Ok(())
}

/// A source's two read queries: its pending rows from the start, and from a cursor on.
#[derive(Debug, Default)]
pub(crate) struct Reads {
    pub first: String,
    /// From the cursor bound at `after`'s placeholder on.
    pub after: String,
}

impl Reads {
    /// Both queries, the cursor compared at the placeholder `after`.
    pub(crate) fn new(config: &SourceConfig, d: &Dialect, after: &str) -> Self {
        Self {
            first: select_pending(config, d, None),
            after: select_pending(config, d, Some(after)),
        }
    }

    /// The query for a read from `cursor` (or from the start).
    pub(crate) fn for_cursor(&self, cursor: Option<&str>) -> &str {
        if cursor.is_some() { &self.after } else { &self.first }
    }
}

/// The rows of [`select_pending`]'s answer read through sqlx (PostgreSQL, MySQL).
pub(crate) fn sqlx_rows<R>(rows: &[R]) -> Result<Vec<SourceRow>, SourceError>
where
    R: sqlx::Row,
    usize: sqlx::ColumnIndex<R>,
    for<'r> Option<String>: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    for<'r> Option<i64>: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
{
    rows.iter()
        .map(sqlx_row)
        .collect::<Result<_, sqlx::Error>>()
        .map_err(|e| SourceError::Query(e.to_string()))
}

/// One row: the columns in the order of [`SourceRow`]'s fields.
fn sqlx_row<R>(r: &R) -> Result<SourceRow, sqlx::Error>
where
    R: sqlx::Row,
    usize: sqlx::ColumnIndex<R>,
    for<'r> Option<String>: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    for<'r> Option<i64>: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
{
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
        deliver_at: r.try_get(9)?,
        deliver_at_ms: r.try_get(10)?,
        traceparent: r.try_get(11)?,
    })
}

/// The alias of the source table in the read query: `ORDER BY source_rows.<order_by>` sorts by
/// the table's column, never by a result column of the same name (PostgreSQL resolves a bare
/// `ORDER BY "id"` to the text-cast `"id"::text` of the select list, and sorted ids as text).
const ROWS: &str = "source_rows";

/// The read query of a source: its pending rows in `order_by` order, the mapped columns in
/// the order of [`SourceRow`]'s fields, at most the bound limit. With `after` (the SQL of the
/// cursor's placeholder, cast to the column's type where the database needs it), only rows from
/// that `order_by` value on: an index range scan that starts where the last batch ended,
/// instead of stepping again over every row relayed since the last vacuum.
pub(crate) fn select_pending(config: &SourceConfig, d: &Dialect, after: Option<&str>) -> String {
    let c = &config.columns;
    let q = |name: &str| quote(name, d.quote);
    let text = |name: &str| (d.text)(&q(name));
    let optional = |name: &Option<String>| name.as_deref().map_or_else(|| d.null_text.to_owned(), text);
    let created = c
        .created_at
        .as_deref()
        .map_or_else(|| d.null_ms.to_owned(), |n| (d.epoch_ms)(&q(n)));
    let deliver_at = c.deliver_at.as_deref().map_or_else(
        || format!("{}, {}", d.null_text, d.null_ms),
        |n| format!("{}, {}", text(n), (d.epoch_ms)(&q(n))),
    );
    let mut filter = match &c.status {
        Some(status) => format!("WHERE {} = {}", q(status), d.pending),
        None => format!("WHERE {} IS NOT NULL", d.pending_typed),
    };
    let order = format!("{ROWS}.{}", q(&config.order_by));
    if let Some(after) = after {
        filter.push_str(&format!(" AND {order} >= {after}"));
    }
    format!(
        "SELECT {}, {}, {}, {}, {}, {}, {}, {created}, {}, {deliver_at}, {} FROM {} AS {ROWS} {filter} ORDER BY {order} LIMIT {}",
        text(&c.id),
        text(&c.event_type),
        text(&c.payload),
        optional(&c.headers),
        optional(&c.idempotency_key),
        optional(&c.ordering_key),
        optional(&c.aggregate_type),
        text(&config.order_by),
        optional(&c.traceparent),
        q(&config.table),
        d.limit,
    )
}

pub(crate) fn quote(ident: &str, q: char) -> String {
    ident
        .split('.')
        .map(|p| format!("{q}{p}{q}"))
        .collect::<Vec<_>>()
        .join(".")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_thirty_seconds() {
        assert_eq!(backoff(1), Duration::from_millis(100));
        assert_eq!(backoff(2), Duration::from_millis(200));
        assert_eq!(backoff(5), Duration::from_millis(1600));
        assert_eq!(backoff(50), Duration::from_secs(30));
    }

    #[test]
    fn identifiers_are_quoted_per_part() {
        assert_eq!(quote("app.outbox", '"'), "\"app\".\"outbox\"");
        assert_eq!(quote("outbox", '`'), "`outbox`");
    }
}
