//! The shared store: PostgreSQL, for several `outboxd serve` hosts delivering from one
//! database. Hosts share the work through the database alone: claims take due deliveries with
//! `FOR UPDATE SKIP LOCKED` under a lease (owner + expiry), a settle changes a delivery only
//! while its owner still holds that lease, and a host that dies simply lets its leases expire
//! (there is no lock file and no start-up recovery). What must hold cluster-wide lives in the
//! database too: the producer idempotency ledger (a primary key, written with `ON CONFLICT`),
//! the manual pause, the per-key FIFO, the rate limit of each target (a token-bucket row), and
//! which targets are loaded somewhere (so that a host without a target does not pause work
//! another host delivers). Every ingest, replay and resume sends a `NOTIFY` that wakes the idle
//! lanes of every host. Schema migrations run under an advisory lock, once, however many
//! hosts start together. Transactions are short and never span a plugin call.
//!
//! The SQL is grouped by the trait method it serves; rows are always locked deliveries first,
//! then attempts, and several deliveries in id order (or with `SKIP LOCKED`), so that
//! concurrent hosts cannot deadlock; a deadlock or serialization failure the server reports
//! anyway is retried.

use std::collections::BTreeMap;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use sqlx::postgres::{PgConnectOptions, PgConnection, PgListener, PgPool, PgPoolOptions};
use sqlx::{Connection, Executor as _, Postgres, QueryBuilder, Row};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use super::{
    AttemptRecord, Claimed, DeliveryDetail, EventDetail, FailedDelivery, FailedFilter, Ingested, NewEvent,
    SettleReport, Settlement, StatusCounts, Store, StoreError, StoredEvent, TokenGrant, VersionAttempts,
};
use crate::domain::{AttemptOutcome, DeliveryStatus, EventId, Millis, TargetName, now_ms};

/// Schema migrations, applied in order; `outboxd_schema` records the applied ones.
const MIGRATIONS: &[&str] = &[r#"
CREATE TABLE events (
    id              TEXT PRIMARY KEY,
    type            TEXT NOT NULL,
    payload         TEXT NOT NULL,
    headers         TEXT NOT NULL,
    idempotency_key TEXT,
    ordering_key    TEXT,
    created_at      BIGINT NOT NULL
);

-- The producer idempotency ledger. The key is written first, with ON CONFLICT DO NOTHING:
-- of two hosts ingesting the same key at once, the second waits for the first to commit and
-- then finds the key taken. The event row follows in the same transaction (deferred check).
CREATE TABLE idempotency_keys (
    key        TEXT PRIMARY KEY,
    -- No foreign key: retention may keep a key longer than its event (idempotency_retention),
    -- so a late producer retry is still recognised.
    event_id   TEXT NOT NULL,
    created_at BIGINT NOT NULL
);
CREATE INDEX idempotency_keys_age ON idempotency_keys (created_at);
CREATE INDEX events_age ON events (created_at);

CREATE TABLE deliveries (
    id               BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    event_id         TEXT NOT NULL REFERENCES events(id),
    target           TEXT NOT NULL,
    status           TEXT NOT NULL
                     CHECK (status IN ('pending', 'in_flight', 'delivered', 'dead', 'discarded', 'paused')),
    attempts         INTEGER NOT NULL DEFAULT 0,
    attempt_seq      INTEGER NOT NULL DEFAULT 0,
    next_attempt_at  BIGINT NOT NULL,
    lease_owner      TEXT,
    lease_expires_at BIGINT,
    last_error       TEXT,
    delivered_at     BIGINT,
    ordering_key     TEXT,
    updated_at       BIGINT NOT NULL,
    UNIQUE (event_id, target)
);
-- The claim query: due pending deliveries of one target, oldest first. Partial, so it stays
-- as small as the backlog however many delivered rows the table holds.
CREATE INDEX deliveries_due ON deliveries (target, next_attempt_at, id) WHERE status = 'pending';
CREATE INDEX deliveries_expiry ON deliveries (lease_expires_at) WHERE status = 'in_flight';
CREATE INDEX deliveries_lease ON deliveries (lease_owner) WHERE lease_owner IS NOT NULL;
CREATE INDEX deliveries_order ON deliveries (target, ordering_key, id) WHERE ordering_key IS NOT NULL;
CREATE INDEX deliveries_failed ON deliveries (status, updated_at) WHERE status IN ('dead', 'discarded');
CREATE INDEX deliveries_paused ON deliveries (target) WHERE status = 'paused';
CREATE INDEX deliveries_counts ON deliveries (target, status);
-- Every row is updated several times in its life (claim, settle, retries): vacuum it early
-- and often so the partial indexes stay small, and leave room on each page for updates that
-- stay on the page (HOT).
ALTER TABLE deliveries SET (
    fillfactor = 80,
    autovacuum_vacuum_scale_factor = 0.01,
    autovacuum_vacuum_insert_scale_factor = 0.05,
    autovacuum_analyze_scale_factor = 0.02,
    autovacuum_vacuum_cost_delay = 1
);

CREATE TABLE attempts (
    delivery_id BIGINT NOT NULL REFERENCES deliveries(id),
    n           INTEGER NOT NULL,
    started_at  BIGINT NOT NULL,
    duration_ms BIGINT,
    outcome     TEXT NOT NULL CHECK (outcome IN ('running', 'delivered', 'retry', 'permanent', 'abandoned')),
    error       TEXT,
    plugin_hash TEXT,
    -- The host (lease owner) that ran the attempt.
    owner       TEXT,
    PRIMARY KEY (delivery_id, n)
);

CREATE TABLE version_attempts (
    target      TEXT NOT NULL,
    plugin_hash TEXT NOT NULL,
    attempts    BIGINT NOT NULL,
    PRIMARY KEY (target, plugin_hash)
);

-- Targets paused by hand: no host claims their deliveries.
CREATE TABLE target_state (
    target     TEXT PRIMARY KEY,
    paused     BOOLEAN NOT NULL,
    updated_at BIGINT NOT NULL
);

-- The cluster-wide rate limit of each target: one token bucket, refilled by the database's
-- clock, taken from by every host.
CREATE TABLE rate_buckets (
    target     TEXT PRIMARY KEY,
    tokens     DOUBLE PRECISION NOT NULL,
    updated_at DOUBLE PRECISION NOT NULL
);

-- The hosts serving, with the targets each has loaded, kept fresh by their heartbeat: a target
-- is paused only when no live host has it.
CREATE TABLE cluster_hosts (
    host       TEXT PRIMARY KEY,
    targets    TEXT[] NOT NULL,
    expires_at BIGINT NOT NULL
);
"#];

/// The advisory lock that serialises migrations across hosts ("outboxd" in ASCII).
const MIGRATION_LOCK: i64 = 0x006f_7574_626f_7864;
/// The channel of wake-ups.
const WAKE_CHANNEL: &str = "outboxd_wake";
/// Connections per host.
const POOL_SIZE: u32 = 16;
/// How often a transaction that lost a deadlock or serialization conflict is tried again.
const RETRIES: u32 = 5;
/// How long a host's entry in `cluster_hosts` lasts without a heartbeat.
const HOST_TTL_MS: Millis = 120_000;
/// Most expired leases returned by one sweep.
const SWEEP_CHUNK: i64 = 1_000;

/// The PostgreSQL store.
#[derive(Clone)]
pub struct PgStore {
    pool: PgPool,
    /// This process's entry in `cluster_hosts`.
    host_id: String,
}

impl std::fmt::Debug for PgStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgStore").finish_non_exhaustive()
    }
}

/// `url` with any password replaced by `***`, for messages.
pub fn redact(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    let authority_end = rest.find(['/', '?']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(authority_end);
    match authority.rsplit_once('@') {
        Some((userinfo, host)) if userinfo.contains(':') => {
            let user = userinfo.split(':').next().unwrap_or_default();
            format!("{scheme}://{user}:***@{host}{tail}")
        }
        _ => url.to_owned(),
    }
}

/// Whether a failed transaction may simply be run again.
fn retryable(e: &sqlx::Error) -> bool {
    match e {
        sqlx::Error::Database(db) => matches!(db.code().as_deref(), Some("40P01" | "40001")),
        _ => false,
    }
}

/// Runs `$body` (an expression yielding a future of `Result<_, sqlx::Error>`) again when it
/// fails with a deadlock or serialization failure.
macro_rules! retrying {
    ($body:expr) => {{
        let mut tries = 0;
        loop {
            match $body.await {
                Err(e) if tries < RETRIES && retryable(&e) => {
                    tries += 1;
                    tokio::time::sleep(Duration::from_millis(5 * u64::from(tries))).await;
                }
                other => break other.map_err(StoreError::from),
            }
        }
    }};
}

fn parse<T: FromStr>(s: &str) -> Result<T, StoreError>
where
    T::Err: std::fmt::Display,
{
    s.parse().map_err(|e: T::Err| StoreError::Corrupt(e.to_string()))
}

fn u32_of(v: i32) -> u32 {
    v.max(0) as u32
}

impl PgStore {
    /// Connects to the database at `url`, creating or migrating its schema (under an advisory
    /// lock, so hosts starting together migrate once).
    pub async fn open(url: &str) -> Result<Self, StoreError> {
        let options = PgConnectOptions::from_str(url)
            .map_err(|e| StoreError::Config(format!("database URL {}: {e}", redact(url))))?
            .application_name("outboxd");
        let conn = PgConnection::connect_with(&options)
            .await
            .map_err(|e| StoreError::Connect {
                url: redact(url),
                source: e,
            })?;
        migrate(conn).await?;
        let pool = PgPoolOptions::new()
            .max_connections(POOL_SIZE)
            .acquire_timeout(Duration::from_secs(10))
            .connect_with(options)
            .await
            .map_err(|e| StoreError::Connect {
                url: redact(url),
                source: e,
            })?;
        Ok(Self {
            pool,
            host_id: uuid::Uuid::now_v7().simple().to_string(),
        })
    }
}

/// Applies the missing migrations on `conn`, its own session, and closes it: the advisory lock
/// belongs to the session, so closing it releases the lock whatever happened.
async fn migrate(mut conn: PgConnection) -> Result<(), StoreError> {
    let migrated = migrate_locked(&mut conn).await;
    let _ = conn.close().await;
    migrated
}

async fn migrate_locked(conn: &mut PgConnection) -> Result<(), StoreError> {
    sqlx::query("SELECT pg_advisory_lock($1)")
        .bind(MIGRATION_LOCK)
        .execute(&mut *conn)
        .await?;
    sqlx::query("CREATE TABLE IF NOT EXISTS outboxd_schema (version INTEGER PRIMARY KEY, applied_at BIGINT NOT NULL)")
        .execute(&mut *conn)
        .await?;
    let version: i32 = sqlx::query_scalar("SELECT COALESCE(MAX(version), 0) FROM outboxd_schema")
        .fetch_one(&mut *conn)
        .await?;
    let supported = MIGRATIONS.len() as i64;
    if i64::from(version) > supported {
        return Err(StoreError::TooNew {
            found: i64::from(version),
            supported,
        });
    }
    for (i, sql) in MIGRATIONS.iter().copied().enumerate().skip(version as usize) {
        let mut tx = conn.begin().await?;
        tx.execute(sql).await?;
        sqlx::query("INSERT INTO outboxd_schema (version, applied_at) VALUES ($1, $2)")
            .bind((i + 1) as i32)
            .bind(now_ms())
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        tracing::info!(version = i + 1, "applied PostgreSQL schema migration");
    }
    Ok(())
}

const EVENT_COLUMNS: &str = "id, type, payload, headers, idempotency_key, ordering_key, created_at";

fn stored_event(row: &sqlx::postgres::PgRow) -> Result<StoredEvent, StoreError> {
    let headers: String = row.try_get("headers")?;
    Ok(StoredEvent {
        id: parse(row.try_get::<&str, _>("id")?)?,
        event_type: row.try_get("type")?,
        payload: row.try_get("payload")?,
        headers: serde_json::from_str(&headers).map_err(|e| StoreError::Corrupt(e.to_string()))?,
        idempotency_key: row.try_get("idempotency_key")?,
        ordering_key: row.try_get("ordering_key")?,
        created_at: row.try_get("created_at")?,
    })
}

async fn notify(conn: &mut PgConnection) -> Result<(), sqlx::Error> {
    sqlx::query("SELECT pg_notify($1, '')")
        .bind(WAKE_CHANNEL)
        .execute(conn)
        .await?;
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// ingest (and the operational events of settle)

/// Writes events, their idempotency keys and one pending delivery per target, inside the
/// caller's transaction. Events with a known idempotency key write nothing.
async fn insert_events(tx: &mut PgConnection, events: &[NewEvent], now: Millis) -> Result<Vec<Ingested>, sqlx::Error> {
    let mut out = Vec::with_capacity(events.len());
    let mut any_delivery = false;
    for e in events {
        let id = e.id.to_string();
        if let Some(key) = &e.idempotency_key {
            let taken = sqlx::query(
                "INSERT INTO idempotency_keys (key, event_id, created_at) VALUES ($1, $2, $3)
                 ON CONFLICT (key) DO NOTHING",
            )
            .bind(key.as_str())
            .bind(&id)
            .bind(now)
            .execute(&mut *tx)
            .await?
            .rows_affected()
                == 0;
            if taken {
                let first: String = sqlx::query_scalar("SELECT event_id FROM idempotency_keys WHERE key = $1")
                    .bind(key.as_str())
                    .fetch_one(&mut *tx)
                    .await?;
                let first = first
                    .parse()
                    .map_err(|e: crate::domain::InvalidValue| sqlx::Error::Decode(e.0.into()))?;
                out.push(Ingested {
                    id: first,
                    duplicate: true,
                });
                continue;
            }
        }
        let headers = serde_json::to_string(&e.headers).map_err(|e| sqlx::Error::Encode(Box::new(e)))?;
        sqlx::query(
            "INSERT INTO events (id, type, payload, headers, idempotency_key, ordering_key, created_at)
             VALUES ($1, $2, $3, $4, $5, $6, $7)",
        )
        .bind(&id)
        .bind(e.event_type.as_str())
        .bind(&e.payload)
        .bind(headers)
        .bind(e.idempotency_key.as_ref().map(|k| k.as_str()))
        .bind(&e.ordering_key)
        .bind(now)
        .execute(&mut *tx)
        .await?;
        if !e.targets.is_empty() {
            let targets: Vec<&str> = e.targets.iter().map(|t| t.as_str()).collect();
            sqlx::query(
                "INSERT INTO deliveries (event_id, target, status, next_attempt_at, ordering_key, updated_at)
                 SELECT $1, t, 'pending', $3, $4, $3 FROM unnest($2::text[]) AS t",
            )
            .bind(&id)
            .bind(targets)
            .bind(now)
            .bind(&e.ordering_key)
            .execute(&mut *tx)
            .await?;
            any_delivery = true;
        }
        out.push(Ingested {
            id: e.id,
            duplicate: false,
        });
    }
    if any_delivery {
        // Delivered at commit, to every host listening (this one included).
        notify(tx).await?;
    }
    Ok(out)
}

// ---------------------------------------------------------------------------------------------
// returning in-flight deliveries to pending (sweeper, release, recovery, claim take-over)

/// Which in-flight deliveries to return.
#[derive(Clone, Copy)]
enum InFlight<'a> {
    /// Leases expired at this time, any target.
    Expired(Millis),
    /// Leases of this target expired at this time.
    ExpiredOf(&'a str, Millis),
    /// Every lease of this owner.
    Owner(&'a str),
    /// Every in-flight delivery.
    All,
}

/// Returns the chosen in-flight deliveries to pending (due `now`, or as they were for a
/// take-over) and abandons their running attempt with `why`. Rows another transaction holds
/// are skipped: they are being settled or claimed right now.
async fn return_in_flight(
    tx: &mut PgConnection,
    which: InFlight<'_>,
    now: Millis,
    why: &str,
) -> Result<usize, sqlx::Error> {
    let mut q: QueryBuilder<Postgres> =
        QueryBuilder::new("WITH chosen AS MATERIALIZED (SELECT id FROM deliveries WHERE status = 'in_flight'");
    match which {
        InFlight::Expired(at) => {
            q.push(" AND lease_expires_at <= ").push_bind(at);
        }
        InFlight::ExpiredOf(target, at) => {
            q.push(" AND target = ")
                .push_bind(target.to_owned())
                .push(" AND lease_expires_at <= ")
                .push_bind(at);
        }
        InFlight::Owner(owner) => {
            q.push(" AND lease_owner = ").push_bind(owner.to_owned());
        }
        InFlight::All => {}
    }
    q.push(" ORDER BY id LIMIT ")
        .push_bind(SWEEP_CHUNK)
        .push(
            " FOR UPDATE SKIP LOCKED)
             UPDATE deliveries d SET status = 'pending', lease_owner = NULL, lease_expires_at = NULL,
                 next_attempt_at = LEAST(d.next_attempt_at, ",
        )
        .push_bind(now)
        .push("), updated_at = ")
        .push_bind(now)
        .push(" FROM chosen c WHERE d.id = c.id RETURNING d.id, d.attempt_seq");
    let rows: Vec<(i64, i32)> = q.build_query_as().fetch_all(&mut *tx).await?;
    if rows.is_empty() {
        return Ok(0);
    }
    let (ids, seqs): (Vec<i64>, Vec<i32>) = rows.into_iter().unzip();
    sqlx::query(
        "UPDATE attempts a SET outcome = 'abandoned', error = $3
         FROM unnest($1::bigint[], $2::int[]) AS r(id, n)
         WHERE a.delivery_id = r.id AND a.n = r.n AND a.outcome = 'running'",
    )
    .bind(&ids)
    .bind(&seqs)
    .bind(why)
    .execute(&mut *tx)
    .await?;
    Ok(ids.len())
}

/// Deletes events with their deliveries and attempt history (retention and prune).
async fn delete_events(tx: &mut sqlx::Transaction<'_, Postgres>, ids: &[String]) -> Result<(), sqlx::Error> {
    if ids.is_empty() {
        return Ok(());
    }
    sqlx::query("DELETE FROM attempts WHERE delivery_id IN (SELECT id FROM deliveries WHERE event_id = ANY($1))")
        .bind(ids)
        .execute(&mut **tx)
        .await?;
    sqlx::query("DELETE FROM deliveries WHERE event_id = ANY($1)")
        .bind(ids)
        .execute(&mut **tx)
        .await?;
    sqlx::query("DELETE FROM events WHERE id = ANY($1)")
        .bind(ids)
        .execute(&mut **tx)
        .await?;
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// the dead-letter filter

/// Appends the WHERE conditions of a [`FailedFilter`] over `deliveries d` (after `WHERE`).
fn push_failed_where(q: &mut QueryBuilder<'_, Postgres>, f: &FailedFilter) {
    let statuses: Vec<String> = if f.statuses.is_empty() {
        vec![DeliveryStatus::Dead, DeliveryStatus::Discarded]
    } else {
        f.statuses
            .iter()
            .copied()
            .filter(|s| matches!(s, DeliveryStatus::Dead | DeliveryStatus::Discarded))
            .collect()
    }
    .iter()
    .map(|s| s.as_str().to_owned())
    .collect();
    q.push("d.status = ANY(").push_bind(statuses).push(")");
    if let Some(t) = &f.target {
        q.push(" AND d.target = ").push_bind(t.to_string());
    }
    if let Some(glob) = &f.event_type {
        q.push(" AND d.event_id IN (SELECT id FROM events WHERE type LIKE ")
            .push_bind(glob_to_like(glob))
            .push(" ESCAPE '\\')");
    }
    if let Some(since) = f.since {
        q.push(" AND d.updated_at >= ").push_bind(since);
    }
    if let Some(until) = f.until {
        q.push(" AND d.updated_at < ").push_bind(until);
    }
    if let Some(text) = &f.error_contains {
        q.push(" AND strpos(lower(d.last_error), lower(")
            .push_bind(text.clone())
            .push(")) > 0");
    }
    if !f.delivery_ids.is_empty() {
        q.push(" AND d.id = ANY(").push_bind(f.delivery_ids.clone()).push(")");
    }
}

/// A manifest-style glob (`*`, `?`, everything else literal) as a `LIKE` pattern with `\` as
/// the escape character.
fn glob_to_like(glob: &str) -> String {
    let mut out = String::with_capacity(glob.len() + 4);
    for c in glob.chars() {
        match c {
            '*' => out.push('%'),
            '?' => out.push('_'),
            '%' | '_' | '\\' => {
                out.push('\\');
                out.push(c);
            }
            c => out.push(c),
        }
    }
    out
}

// ---------------------------------------------------------------------------------------------
// the transactions

impl PgStore {
    async fn ingest_once(&self, events: &[NewEvent], now: Millis) -> Result<Vec<Ingested>, sqlx::Error> {
        let mut tx = self.pool.begin().await?;
        let out = insert_events(&mut tx, events, now).await?;
        tx.commit().await?;
        Ok(out)
    }

    #[allow(clippy::too_many_arguments)]
    async fn unclaim_once(&self, owner: &str, ids: &[i64], seqs: &[i32]) -> Result<usize, sqlx::Error> {
        let mut tx = self.pool.begin().await?;
        let given_back: Vec<(i64, i32)> = sqlx::query_as(
            "UPDATE deliveries d
             SET status = 'pending', lease_owner = NULL, lease_expires_at = NULL,
                 attempts = d.attempts - 1, attempt_seq = d.attempt_seq - 1
             FROM unnest($1::bigint[], $2::int[]) AS r(id, n)
             WHERE d.id = r.id AND d.attempt_seq = r.n AND d.lease_owner = $3 AND d.status = 'in_flight'
             RETURNING d.id, r.n",
        )
        .bind(ids)
        .bind(seqs)
        .bind(owner)
        .fetch_all(&mut *tx)
        .await?;
        let (ids, seqs): (Vec<i64>, Vec<i32>) = given_back.into_iter().unzip();
        sqlx::query(
            "DELETE FROM attempts a USING unnest($1::bigint[], $2::int[]) AS r(id, n)
             WHERE a.delivery_id = r.id AND a.n = r.n AND a.outcome = 'running'",
        )
        .bind(&ids)
        .bind(&seqs)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(ids.len())
    }

    async fn claim_once(
        &self,
        target: &str,
        limit: i64,
        owner: &str,
        now: Millis,
        lease_until: Millis,
        ordered: bool,
    ) -> Result<Vec<Claimed>, sqlx::Error> {
        let mut tx = self.pool.begin().await?;
        let paused: Option<bool> = sqlx::query_scalar("SELECT paused FROM target_state WHERE target = $1")
            .bind(target)
            .fetch_optional(&mut *tx)
            .await?;
        if paused == Some(true) {
            return Ok(Vec::new());
        }
        // Expired leases of this target: the attempt they covered never reported back.
        return_in_flight(
            &mut tx,
            InFlight::ExpiredOf(target, now),
            now,
            "lease expired before the attempt reported back",
        )
        .await?;
        // An ordered target: a keyed delivery waits for every earlier one of its key. A
        // concurrent claimer's rows are skipped (locked), and in this snapshot they are
        // still pending, so the deliveries behind them stay blocked as they should.
        let fifo = if ordered {
            "AND (d.ordering_key IS NULL OR NOT EXISTS (
                SELECT 1 FROM deliveries e
                WHERE e.target = d.target AND e.ordering_key = d.ordering_key AND e.id < d.id
                  AND e.status IN ('pending', 'in_flight', 'paused')))"
        } else {
            ""
        };
        // The candidate set is materialised (locked, LIMIT applied after SKIP LOCKED) before
        // the update, so the planner cannot re-run the subquery per row and over-claim.
        let claimed: Vec<(i64, String, i32, i32)> = sqlx::query_as(&format!(
            "WITH candidates AS MATERIALIZED (
                 SELECT d.id FROM deliveries d
                 WHERE d.target = $1 AND d.status = 'pending' AND d.next_attempt_at <= $2 {fifo}
                 ORDER BY d.next_attempt_at, d.id
                 LIMIT $3
                 FOR UPDATE SKIP LOCKED)
             UPDATE deliveries d
             SET status = 'in_flight', lease_owner = $4, lease_expires_at = $5, attempts = d.attempts + 1,
                 attempt_seq = d.attempt_seq + 1, updated_at = $2
             FROM candidates c WHERE d.id = c.id
             RETURNING d.id, d.event_id, d.attempts, d.attempt_seq"
        ))
        .bind(target)
        .bind(now)
        .bind(limit)
        .bind(owner)
        .bind(lease_until)
        .fetch_all(&mut *tx)
        .await?;
        if claimed.is_empty() {
            tx.commit().await?;
            return Ok(Vec::new());
        }
        let ids: Vec<i64> = claimed.iter().map(|c| c.0).collect();
        let seqs: Vec<i32> = claimed.iter().map(|c| c.3).collect();
        sqlx::query(
            "INSERT INTO attempts (delivery_id, n, started_at, outcome, owner)
             SELECT id, n, $3, 'running', $4 FROM unnest($1::bigint[], $2::int[]) AS r(id, n)",
        )
        .bind(&ids)
        .bind(&seqs)
        .bind(now)
        .bind(owner)
        .execute(&mut *tx)
        .await?;
        let event_ids: Vec<&str> = claimed.iter().map(|c| c.1.as_str()).collect();
        let rows = sqlx::query(&format!("SELECT {EVENT_COLUMNS} FROM events WHERE id = ANY($1)"))
            .bind(&event_ids)
            .fetch_all(&mut *tx)
            .await?;
        tx.commit().await?;
        let mut events = BTreeMap::new();
        for row in &rows {
            let e = stored_event(row).map_err(|e| sqlx::Error::Decode(e.to_string().into()))?;
            events.insert(e.id.to_string(), e);
        }
        let target_name: TargetName = target
            .parse()
            .map_err(|e: crate::domain::InvalidValue| sqlx::Error::Decode(e.0.into()))?;
        let mut out = Vec::with_capacity(claimed.len());
        for (delivery_id, event_id, attempt, seq) in claimed {
            let event = events
                .get(&event_id)
                .cloned()
                .ok_or_else(|| sqlx::Error::Decode(format!("delivery {delivery_id} has no event {event_id}").into()))?;
            out.push(Claimed {
                delivery_id,
                target: target_name.clone(),
                attempt: u32_of(attempt),
                seq: u32_of(seq),
                event,
            });
        }
        out.sort_by_key(|c| c.delivery_id);
        Ok(out)
    }

    async fn settle_once(&self, owner: &str, batch: &[Settlement]) -> Result<SettleReport, sqlx::Error> {
        let mut tx = self.pool.begin().await?;
        let mut report = SettleReport::default();
        let mut emitted = Vec::new();
        // Deliveries in id order (no deadlock with another host's settle), then the history.
        let mut order: Vec<&Settlement> = batch.iter().collect();
        order.sort_by_key(|s| s.delivery_id);
        for s in &order {
            let changed = sqlx::query(
                "UPDATE deliveries
                 SET status = $1, next_attempt_at = $2, last_error = $3,
                     delivered_at = CASE WHEN $1 = 'delivered' THEN $4 ELSE delivered_at END,
                     lease_owner = NULL, lease_expires_at = NULL, updated_at = $4
                 WHERE id = $5 AND lease_owner = $6 AND attempt_seq = $7 AND status = 'in_flight'",
            )
            .bind(s.status.as_str())
            .bind(s.next_attempt_at)
            .bind(&s.last_error)
            .bind(s.finished_at)
            .bind(s.delivery_id)
            .bind(owner)
            .bind(s.seq as i32)
            .execute(&mut *tx)
            .await?
            .rows_affected();
            if changed == 0 {
                report.lost_leases.push(s.delivery_id);
            } else {
                emitted.extend(s.emit.iter().cloned());
            }
        }
        // The attempt happened either way: the history keeps what it did.
        let ids: Vec<i64> = order.iter().map(|s| s.delivery_id).collect();
        let seqs: Vec<i32> = order.iter().map(|s| s.seq as i32).collect();
        let outcomes: Vec<&str> = order.iter().map(|s| s.outcome.as_str()).collect();
        let errors: Vec<Option<String>> = order.iter().map(|s| s.last_error.clone()).collect();
        let durations: Vec<i64> = order.iter().map(|s| s.duration_ms as i64).collect();
        let hashes: Vec<Option<String>> = order.iter().map(|s| s.plugin_hash.clone()).collect();
        sqlx::query(
            "UPDATE attempts a SET outcome = r.outcome, error = r.error, duration_ms = r.duration_ms,
                 plugin_hash = r.plugin_hash
             FROM unnest($1::bigint[], $2::int[], $3::text[], $4::text[], $5::bigint[], $6::text[])
                  AS r(id, n, outcome, error, duration_ms, plugin_hash)
             WHERE a.delivery_id = r.id AND a.n = r.n",
        )
        .bind(&ids)
        .bind(&seqs)
        .bind(&outcomes)
        .bind(&errors)
        .bind(&durations)
        .bind(&hashes)
        .execute(&mut *tx)
        .await?;
        // Per-version counters, summed and written in key order (hot rows shared by hosts).
        let mut versions: BTreeMap<(&str, &str), i64> = BTreeMap::new();
        for s in &order {
            if let Some(hash) = &s.plugin_hash {
                *versions.entry((s.target.as_str(), hash.as_str())).or_default() += 1;
            }
        }
        for ((target, hash), n) in versions {
            sqlx::query(
                "INSERT INTO version_attempts (target, plugin_hash, attempts) VALUES ($1, $2, $3)
                 ON CONFLICT (target, plugin_hash) DO UPDATE SET attempts = version_attempts.attempts + $3",
            )
            .bind(target)
            .bind(hash)
            .bind(n)
            .execute(&mut *tx)
            .await?;
        }
        if !emitted.is_empty() {
            insert_events(&mut tx, &emitted, now_ms()).await?;
        }
        tx.commit().await?;
        Ok(report)
    }

    async fn return_once(&self, which: InFlight<'_>, now: Millis, why: &str) -> Result<usize, sqlx::Error> {
        let mut total = 0;
        loop {
            let mut tx = self.pool.begin().await?;
            let n = return_in_flight(&mut tx, which, now, why).await?;
            if n > 0 {
                notify(&mut tx).await?;
            }
            tx.commit().await?;
            total += n;
            if (n as i64) < SWEEP_CHUNK {
                return Ok(total);
            }
        }
    }

    async fn replay_once(&self, filter: &FailedFilter, limit: i64, now: Millis) -> Result<usize, sqlx::Error> {
        let mut tx = self.pool.begin().await?;
        let mut q: QueryBuilder<Postgres> =
            QueryBuilder::new("WITH chosen AS MATERIALIZED (SELECT d.id FROM deliveries d WHERE ");
        push_failed_where(&mut q, filter);
        q.push(" ORDER BY d.id LIMIT ")
            .push_bind(limit)
            .push(
                " FOR UPDATE SKIP LOCKED)
                 UPDATE deliveries d SET status = 'pending', attempts = 0, next_attempt_at = ",
            )
            .push_bind(now)
            .push(", updated_at = ")
            .push_bind(now)
            .push(" FROM chosen c WHERE d.id = c.id");
        let n = q.build().execute(&mut *tx).await?.rows_affected() as usize;
        if n > 0 {
            notify(&mut tx).await?;
        }
        tx.commit().await?;
        Ok(n)
    }

    async fn sync_paused_once(&self, live: &[String]) -> Result<(usize, usize), sqlx::Error> {
        let mut tx = self.pool.begin().await?;
        let now = now_ms();
        sqlx::query(
            "INSERT INTO cluster_hosts (host, targets, expires_at) VALUES ($1, $2, $3)
             ON CONFLICT (host) DO UPDATE SET targets = excluded.targets,
                 expires_at = GREATEST(cluster_hosts.expires_at, excluded.expires_at)",
        )
        .bind(&self.host_id)
        .bind(live)
        .bind(now + HOST_TTL_MS)
        .execute(&mut *tx)
        .await?;
        sqlx::query("DELETE FROM cluster_hosts WHERE expires_at <= $1")
            .bind(now)
            .execute(&mut *tx)
            .await?;
        // Loaded anywhere in the cluster: a host that lacks a target (a rolling deploy) must
        // not pause the work another host delivers.
        let live_anywhere = "SELECT DISTINCT unnest(targets) FROM cluster_hosts WHERE expires_at > $1";
        let paused = sqlx::query(&format!(
            "UPDATE deliveries SET status = 'paused'
             WHERE status = 'pending' AND target NOT IN ({live_anywhere})"
        ))
        .bind(now)
        .execute(&mut *tx)
        .await?
        .rows_affected() as usize;
        let resumed = sqlx::query(&format!(
            "UPDATE deliveries SET status = 'pending'
             WHERE status = 'paused' AND target IN ({live_anywhere})"
        ))
        .bind(now)
        .execute(&mut *tx)
        .await?
        .rows_affected() as usize;
        if resumed > 0 {
            notify(&mut tx).await?;
        }
        tx.commit().await?;
        Ok((paused, resumed))
    }

    async fn prune_finished_once(&self, before: Millis, limit: i64) -> Result<usize, sqlx::Error> {
        let mut tx = self.pool.begin().await?;
        let ids: Vec<String> = sqlx::query_scalar(
            "SELECT e.id FROM events e
             WHERE e.created_at < $1
               AND NOT EXISTS (SELECT 1 FROM deliveries d
                               WHERE d.event_id = e.id AND d.status NOT IN ('delivered', 'discarded'))
             ORDER BY e.created_at LIMIT $2
             FOR UPDATE SKIP LOCKED",
        )
        .bind(before)
        .bind(limit)
        .fetch_all(&mut *tx)
        .await?;
        delete_events(&mut tx, &ids).await?;
        tx.commit().await?;
        Ok(ids.len())
    }

    async fn prune_failed_once(&self, filter: &FailedFilter, limit: i64) -> Result<usize, sqlx::Error> {
        let mut tx = self.pool.begin().await?;
        let mut q: QueryBuilder<Postgres> = QueryBuilder::new("SELECT d.id, d.event_id FROM deliveries d WHERE ");
        push_failed_where(&mut q, filter);
        q.push(" ORDER BY d.id LIMIT ")
            .push_bind(limit)
            .push(" FOR UPDATE SKIP LOCKED");
        let chosen: Vec<(i64, String)> = q.build_query_as().fetch_all(&mut *tx).await?;
        let ids: Vec<i64> = chosen.iter().map(|(id, _)| *id).collect();
        let events: Vec<String> = chosen.into_iter().map(|(_, e)| e).collect();
        sqlx::query("DELETE FROM attempts WHERE delivery_id = ANY($1)")
            .bind(&ids)
            .execute(&mut *tx)
            .await?;
        sqlx::query("DELETE FROM deliveries WHERE id = ANY($1)")
            .bind(&ids)
            .execute(&mut *tx)
            .await?;
        // Events left with no delivery at all go too.
        let orphans: Vec<String> = sqlx::query_scalar(
            "SELECT DISTINCT e FROM unnest($1::text[]) AS e
             WHERE NOT EXISTS (SELECT 1 FROM deliveries d WHERE d.event_id = e)",
        )
        .bind(&events)
        .fetch_all(&mut *tx)
        .await?;
        delete_events(&mut tx, &orphans).await?;
        tx.commit().await?;
        Ok(ids.len())
    }

    async fn take_tokens_once(&self, target: &str, rate: f64, want: usize) -> Result<TokenGrant, sqlx::Error> {
        let burst = rate.max(1.0);
        let mut tx = self.pool.begin().await?;
        // The database's clock: every host refills the bucket by the same time.
        sqlx::query(
            "INSERT INTO rate_buckets (target, tokens, updated_at)
             VALUES ($1, $2, extract(epoch FROM clock_timestamp()))
             ON CONFLICT (target) DO NOTHING",
        )
        .bind(target)
        .bind(burst)
        .execute(&mut *tx)
        .await?;
        let (tokens, elapsed): (f64, f64) = sqlx::query_as(
            "SELECT tokens, GREATEST(extract(epoch FROM clock_timestamp())::float8 - updated_at, 0)
             FROM rate_buckets WHERE target = $1 FOR UPDATE",
        )
        .bind(target)
        .fetch_one(&mut *tx)
        .await?;
        let tokens = (tokens + elapsed * rate).min(burst);
        let granted = (tokens.floor().max(0.0) as usize).min(want);
        let left = tokens - granted as f64;
        sqlx::query("UPDATE rate_buckets SET tokens = $2, updated_at = updated_at + $3 WHERE target = $1")
            .bind(target)
            .bind(left)
            .bind(elapsed)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        let wait = if granted > 0 || left >= 1.0 {
            Duration::ZERO
        } else {
            Duration::from_secs_f64((1.0 - left) / rate)
        };
        Ok(TokenGrant { granted, wait })
    }
}

#[async_trait]
impl Store for PgStore {
    async fn ingest(&self, events: Vec<NewEvent>, now: Millis) -> Result<Vec<Ingested>, StoreError> {
        retrying!(self.ingest_once(&events, now))
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
        retrying!(self.claim_once(target.as_str(), limit as i64, owner, now, lease_until, ordered))
    }

    async fn settle(&self, owner: &str, batch: Vec<Settlement>) -> Result<SettleReport, StoreError> {
        retrying!(self.settle_once(owner, &batch))
    }

    async fn unclaim(&self, owner: &str, claims: Vec<(i64, u32)>) -> Result<usize, StoreError> {
        if claims.is_empty() {
            return Ok(0);
        }
        let ids: Vec<i64> = claims.iter().map(|c| c.0).collect();
        let seqs: Vec<i32> = claims.iter().map(|c| c.1 as i32).collect();
        retrying!(self.unclaim_once(owner, &ids, &seqs))
    }

    async fn extend_leases(&self, owner: &str, lease_until: Millis) -> Result<usize, StoreError> {
        let now = now_ms();
        // Rows locked right now are being settled or taken over: nothing to extend there.
        let n = sqlx::query(
            "UPDATE deliveries SET lease_expires_at = GREATEST(lease_expires_at, $1)
             WHERE id IN (SELECT id FROM deliveries WHERE lease_owner = $2 AND status = 'in_flight'
                          FOR UPDATE SKIP LOCKED)",
        )
        .bind(lease_until)
        .bind(owner)
        .execute(&self.pool)
        .await?
        .rows_affected() as usize;
        let ttl = HOST_TTL_MS.max(3 * (lease_until - now));
        sqlx::query("UPDATE cluster_hosts SET expires_at = $2 WHERE host = $1")
            .bind(&self.host_id)
            .bind(now + ttl)
            .execute(&self.pool)
            .await?;
        Ok(n)
    }

    async fn sweep_expired(&self, now: Millis) -> Result<usize, StoreError> {
        retrying!(self.return_once(
            InFlight::Expired(now),
            now,
            "lease expired: the worker stopped without reporting back"
        ))
    }

    async fn set_target_paused(&self, target: &TargetName, paused: bool, now: Millis) -> Result<bool, StoreError> {
        let mut tx = self.pool.begin().await?;
        let mut changed =
            sqlx::query("UPDATE target_state SET paused = $2, updated_at = $3 WHERE target = $1 AND paused <> $2")
                .bind(target.as_str())
                .bind(paused)
                .bind(now)
                .execute(&mut *tx)
                .await?
                .rows_affected()
                > 0;
        if !changed && paused {
            changed = sqlx::query(
                "INSERT INTO target_state (target, paused, updated_at) VALUES ($1, TRUE, $2)
                 ON CONFLICT (target) DO NOTHING",
            )
            .bind(target.as_str())
            .bind(now)
            .execute(&mut *tx)
            .await?
            .rows_affected()
                > 0;
        }
        if changed && !paused {
            notify(&mut tx).await?;
        }
        tx.commit().await?;
        Ok(changed)
    }

    async fn paused_targets(&self) -> Result<Vec<String>, StoreError> {
        Ok(
            sqlx::query_scalar("SELECT target FROM target_state WHERE paused ORDER BY target")
                .fetch_all(&self.pool)
                .await?,
        )
    }

    async fn list_failed(
        &self,
        filter: FailedFilter,
        after: i64,
        limit: usize,
    ) -> Result<Vec<FailedDelivery>, StoreError> {
        let mut q: QueryBuilder<Postgres> = QueryBuilder::new(
            "SELECT d.id, d.event_id, e.type, d.target, d.status, d.attempts, d.last_error, d.updated_at
             FROM deliveries d JOIN events e ON e.id = d.event_id WHERE ",
        );
        push_failed_where(&mut q, &filter);
        q.push(" AND d.id > ")
            .push_bind(after)
            .push(" ORDER BY d.id LIMIT ")
            .push_bind(limit as i64);
        let rows: Vec<(i64, String, String, String, String, i32, Option<String>, i64)> =
            q.build_query_as().fetch_all(&self.pool).await?;
        rows.into_iter()
            .map(
                |(delivery_id, event_id, event_type, target, status, attempts, last_error, failed_at)| {
                    Ok(FailedDelivery {
                        delivery_id,
                        event_id: parse(&event_id)?,
                        event_type,
                        target: parse(&target)?,
                        status: parse(&status)?,
                        attempts: u32_of(attempts),
                        last_error,
                        failed_at,
                    })
                },
            )
            .collect()
    }

    async fn count_failed(&self, filter: FailedFilter) -> Result<u64, StoreError> {
        let mut q: QueryBuilder<Postgres> = QueryBuilder::new("SELECT COUNT(*) FROM deliveries d WHERE ");
        push_failed_where(&mut q, &filter);
        let (n,): (i64,) = q.build_query_as().fetch_one(&self.pool).await?;
        Ok(n.max(0) as u64)
    }

    async fn replay(&self, filter: FailedFilter, limit: usize, now: Millis) -> Result<usize, StoreError> {
        retrying!(self.replay_once(&filter, limit as i64, now))
    }

    async fn release(&self, owner: &str, now: Millis) -> Result<usize, StoreError> {
        let n = retrying!(self.return_once(InFlight::Owner(owner), now, "host stopped before the attempt finished"))?;
        sqlx::query("DELETE FROM cluster_hosts WHERE host = $1")
            .bind(&self.host_id)
            .execute(&self.pool)
            .await?;
        Ok(n)
    }

    async fn recover_orphans(&self, now: Millis) -> Result<usize, StoreError> {
        retrying!(self.return_once(
            InFlight::All,
            now,
            "the host stopped during the attempt (crash or kill)"
        ))
    }

    async fn sync_paused(&self, live: Vec<TargetName>) -> Result<(usize, usize), StoreError> {
        let live: Vec<String> = live.iter().map(|t| t.to_string()).collect();
        retrying!(self.sync_paused_once(&live))
    }

    async fn version_attempts(&self) -> Result<VersionAttempts, StoreError> {
        let rows: Vec<(String, String, i64)> =
            sqlx::query_as("SELECT target, plugin_hash, attempts FROM version_attempts")
                .fetch_all(&self.pool)
                .await?;
        let mut out = VersionAttempts::new();
        for (target, hash, n) in rows {
            out.entry(target).or_default().insert(hash, n.max(0) as u64);
        }
        Ok(out)
    }

    async fn next_due(&self, target: &TargetName) -> Result<Option<Millis>, StoreError> {
        Ok(
            sqlx::query_scalar("SELECT MIN(next_attempt_at) FROM deliveries WHERE target = $1 AND status = 'pending'")
                .bind(target.as_str())
                .fetch_one(&self.pool)
                .await?,
        )
    }

    async fn hold_target(&self, target: &TargetName, reason: &str, now: Millis) -> Result<usize, StoreError> {
        // Only while no live host has the target loaded: a plugin that fails on one host (a
        // rolling deploy) must not hold the work another host delivers.
        let n = sqlx::query(
            "UPDATE deliveries SET status = 'paused', last_error = $2, updated_at = $3
             WHERE target = $1
               AND (status = 'pending' OR (status = 'paused' AND last_error IS DISTINCT FROM $2))
               AND NOT EXISTS (SELECT 1 FROM cluster_hosts
                               WHERE expires_at > $3 AND $1 = ANY(targets))",
        )
        .bind(target.as_str())
        .bind(reason)
        .bind(now)
        .execute(&self.pool)
        .await?
        .rows_affected();
        Ok(n as usize)
    }

    async fn prune_finished(&self, before: Millis, limit: usize) -> Result<usize, StoreError> {
        retrying!(self.prune_finished_once(before, limit as i64))
    }

    async fn prune_idempotency_keys(&self, before: Millis, limit: usize) -> Result<usize, StoreError> {
        let n = sqlx::query(
            "DELETE FROM idempotency_keys WHERE key IN
                 (SELECT key FROM idempotency_keys WHERE created_at < $1 ORDER BY created_at LIMIT $2)",
        )
        .bind(before)
        .bind(limit as i64)
        .execute(&self.pool)
        .await?
        .rows_affected();
        Ok(n as usize)
    }

    async fn prune_failed(&self, filter: FailedFilter, limit: usize) -> Result<usize, StoreError> {
        retrying!(self.prune_failed_once(&filter, limit as i64))
    }

    async fn oldest_due(&self, now: Millis) -> Result<std::collections::BTreeMap<String, Millis>, StoreError> {
        let rows: Vec<(String, i64)> = sqlx::query_as(
            "SELECT target, MIN(next_attempt_at) FROM deliveries
             WHERE status = 'pending' AND next_attempt_at <= $1 GROUP BY target",
        )
        .bind(now)
        .fetch_all(&self.pool)
        .await?;
        Ok(rows.into_iter().collect())
    }

    async fn event(&self, id: EventId) -> Result<Option<EventDetail>, StoreError> {
        let id = id.to_string();
        let mut tx = self.pool.begin().await?;
        let Some(row) = sqlx::query(&format!("SELECT {EVENT_COLUMNS} FROM events WHERE id = $1"))
            .bind(&id)
            .fetch_optional(&mut *tx)
            .await?
        else {
            return Ok(None);
        };
        let event = stored_event(&row)?;
        let rows: Vec<(i64, String, String, i32, Option<String>, i64, Option<i64>)> = sqlx::query_as(
            "SELECT id, target, status, attempts, last_error, next_attempt_at, delivered_at
             FROM deliveries WHERE event_id = $1 ORDER BY target",
        )
        .bind(&id)
        .fetch_all(&mut *tx)
        .await?;
        let ids: Vec<i64> = rows.iter().map(|r| r.0).collect();
        let history: Vec<(i64, i32, i64, Option<i64>, String, Option<String>, Option<String>)> = sqlx::query_as(
            "SELECT delivery_id, n, started_at, duration_ms, outcome, error, plugin_hash
             FROM attempts WHERE delivery_id = ANY($1) ORDER BY delivery_id, n",
        )
        .bind(&ids)
        .fetch_all(&mut *tx)
        .await?;
        tx.commit().await?;
        let mut by_delivery: BTreeMap<i64, Vec<AttemptRecord>> = BTreeMap::new();
        for (delivery_id, n, started_at, duration_ms, outcome, error, plugin_hash) in history {
            by_delivery.entry(delivery_id).or_default().push(AttemptRecord {
                n: u32_of(n),
                started_at,
                duration_ms: duration_ms.map(|d| d.max(0) as u64),
                outcome: parse::<AttemptOutcome>(&outcome)?,
                error,
                plugin_hash,
            });
        }
        let mut deliveries = Vec::with_capacity(rows.len());
        for (delivery_id, target, status, attempts, last_error, next_attempt_at, delivered_at) in rows {
            let status: DeliveryStatus = parse(&status)?;
            deliveries.push(DeliveryDetail {
                target: parse(&target)?,
                status,
                attempts: u32_of(attempts),
                last_error,
                next_attempt_at: (status == DeliveryStatus::Pending).then_some(next_attempt_at),
                delivered_at,
                history: by_delivery.remove(&delivery_id).unwrap_or_default(),
            });
        }
        Ok(Some(EventDetail { event, deliveries }))
    }

    async fn status_counts(&self) -> Result<StatusCounts, StoreError> {
        let rows: Vec<(String, String, i64)> =
            sqlx::query_as("SELECT target, status, COUNT(*) FROM deliveries GROUP BY target, status")
                .fetch_all(&self.pool)
                .await?;
        let mut counts = StatusCounts::new();
        for (target, status, n) in rows {
            counts
                .entry(target)
                .or_default()
                .insert(parse(&status)?, n.max(0) as u64);
        }
        Ok(counts)
    }

    fn is_shared(&self) -> bool {
        true
    }

    async fn take_tokens(&self, target: &TargetName, rate: f64, want: usize) -> Result<Option<TokenGrant>, StoreError> {
        retrying!(self.take_tokens_once(target.as_str(), rate, want)).map(Some)
    }

    async fn give_back_tokens(&self, target: &TargetName, rate: f64, n: usize) -> Result<(), StoreError> {
        if n == 0 {
            return Ok(());
        }
        sqlx::query("UPDATE rate_buckets SET tokens = LEAST(tokens + $2, $3) WHERE target = $1")
            .bind(target.as_str())
            .bind(n as f64)
            .bind(rate.max(1.0))
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    async fn forward_wakeups(&self, wake: Arc<Notify>, stop: CancellationToken) {
        forward_wakeups(&self.pool, &wake, &stop).await
    }
}

/// `LISTEN`s for wake-ups and wakes this host's idle lanes on each, until `stop`. A lost
/// connection is re-established (with a wake-up, since notifications may have been missed
/// meanwhile); polling covers the gap.
async fn forward_wakeups(pool: &PgPool, wake: &Notify, stop: &CancellationToken) {
    let mut backoff = Duration::from_millis(100);
    while !stop.is_cancelled() {
        let listener = async {
            let mut l = PgListener::connect_with(pool).await?;
            l.listen(WAKE_CHANNEL).await?;
            Ok::<_, sqlx::Error>(l)
        };
        let mut listener = tokio::select! {
            l = listener => match l {
                Ok(l) => l,
                Err(e) => {
                    tracing::warn!(error = %e, "cannot LISTEN for wake-ups; polling meanwhile");
                    tokio::select! {
                        _ = tokio::time::sleep(backoff) => {}
                        _ = stop.cancelled() => return,
                    }
                    backoff = (backoff * 2).min(Duration::from_secs(10));
                    continue;
                }
            },
            _ = stop.cancelled() => return,
        };
        backoff = Duration::from_millis(100);
        wake.notify_waiters();
        loop {
            tokio::select! {
                n = listener.try_recv() => match n {
                    Ok(Some(_)) => wake.notify_waiters(),
                    Ok(None) => {
                        // The connection dropped; the next try_recv reconnects.
                        wake.notify_waiters();
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "wake-up listener failed; reconnecting");
                        break;
                    }
                },
                _ = stop.cancelled() => return,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::*;
    use crate::domain::{EventType, ProducerKey};

    /// A fresh database on the server at `OUTBOXD_TEST_PG_URL` (default
    /// `postgres://postgres@127.0.0.1:5432`), dropped when the value is dropped.
    struct TempDb {
        server: String,
        name: String,
    }

    impl TempDb {
        async fn new() -> Self {
            let server = std::env::var("OUTBOXD_TEST_PG_URL")
                .ok()
                .filter(|s| !s.trim().is_empty())
                .unwrap_or_else(|| "postgres://postgres@127.0.0.1:5432".into())
                .trim_end_matches('/')
                .to_owned();
            let name = format!("outboxd_unit_{}", uuid::Uuid::now_v7().simple());
            let mut admin = PgConnection::connect(&format!("{server}/postgres"))
                .await
                .unwrap_or_else(|e| panic!("PostgreSQL at {server} (set OUTBOXD_TEST_PG_URL): {e}"));
            sqlx::raw_sql(&format!("CREATE DATABASE {name}"))
                .execute(&mut admin)
                .await
                .unwrap();
            Self { server, name }
        }

        fn url(&self) -> String {
            format!("{}/{}", self.server, self.name)
        }
    }

    impl Drop for TempDb {
        fn drop(&mut self) {
            let (server, name) = (self.server.clone(), self.name.clone());
            // Dropped from within a test's runtime: do it on a thread with a runtime of its own.
            let _ = std::thread::spawn(move || {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .unwrap();
                rt.block_on(async {
                    if let Ok(mut admin) = PgConnection::connect(&format!("{server}/postgres")).await {
                        let _ = sqlx::raw_sql(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
                            .execute(&mut admin)
                            .await;
                    }
                })
            })
            .join();
        }
    }

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

    fn keyed(key: &str) -> NewEvent {
        NewEvent {
            ordering_key: Some(key.into()),
            ..event(None, &["crm"])
        }
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
    async fn hosts_opening_together_migrate_once() {
        let db = TempDb::new().await;
        let url = db.url();
        let opens: Vec<_> = (0..4)
            .map(|_| {
                let url = url.clone();
                tokio::spawn(async move { PgStore::open(&url).await })
            })
            .collect();
        let mut stores = Vec::new();
        for o in opens {
            stores.push(o.await.unwrap().unwrap());
        }
        let versions: Vec<i32> = sqlx::query_scalar("SELECT version FROM outboxd_schema")
            .fetch_all(&stores[0].pool)
            .await
            .unwrap();
        assert_eq!(versions, [1]);
    }

    #[tokio::test]
    async fn a_delivery_given_back_is_another_hosts_to_take_uncounted() {
        let db = TempDb::new().await;
        let (a, b) = (
            PgStore::open(&db.url()).await.unwrap(),
            PgStore::open(&db.url()).await.unwrap(),
        );
        a.ingest((0..3).map(|_| event(None, &["crm"])).collect(), 0)
            .await
            .unwrap();
        let crm = t("crm");
        let claimed = a.claim(&crm, 10, "a", 100, 10_000, false).await.unwrap();
        assert_eq!(claimed.len(), 3);
        let back: Vec<(i64, u32)> = claimed[1..].iter().map(|c| (c.delivery_id, c.seq)).collect();
        assert_eq!(
            b.unclaim("b", back.clone()).await.unwrap(),
            0,
            "only the lease holder gives back"
        );
        assert_eq!(a.unclaim("a", back).await.unwrap(), 2);
        // Long before a's lease would expire, b takes them, as first attempts.
        let taken = b.claim(&crm, 10, "b", 200, 10_000, false).await.unwrap();
        assert_eq!(taken.len(), 2);
        assert!(taken.iter().all(|c| c.attempt == 1 && c.seq == 1));
        let d = &a.event(taken[0].event.id).await.unwrap().unwrap().deliveries[0];
        assert_eq!(
            (d.status, d.attempts, d.history.len()),
            (DeliveryStatus::InFlight, 1, 1)
        );
    }

    #[tokio::test]
    async fn leases_are_exclusive_across_hosts_and_a_lost_lease_settles_nothing() {
        let db = TempDb::new().await;
        let (a, b) = (
            PgStore::open(&db.url()).await.unwrap(),
            PgStore::open(&db.url()).await.unwrap(),
        );
        a.ingest((0..6).map(|_| event(None, &["crm"])).collect(), 0)
            .await
            .unwrap();
        // Two hosts claiming at once get disjoint deliveries.
        let crm = t("crm");
        let (x, y) = tokio::join!(
            a.claim(&crm, 4, "a", 100, 1_000, false),
            b.claim(&crm, 4, "b", 100, 1_000, false)
        );
        let (x, y) = (x.unwrap(), y.unwrap());
        assert_eq!(x.len() + y.len(), 6);
        let ids: BTreeSet<i64> = x.iter().chain(&y).map(|c| c.delivery_id).collect();
        assert_eq!(ids.len(), 6, "no delivery claimed twice");

        // After expiry, b takes over one of a's; a's late outcome changes nothing.
        let first = x.first().or(y.first()).unwrap().clone();
        let holder = if x.iter().any(|c| c.delivery_id == first.delivery_id) {
            "a"
        } else {
            "b"
        };
        let taker = if holder == "a" { "b" } else { "a" };
        let again = b.claim(&t("crm"), 10, taker, 1_000, 2_000, false).await.unwrap();
        assert_eq!(again.len(), 6, "every expired lease is taken over");
        let report = a
            .settle(
                holder,
                vec![settlement(
                    &first,
                    DeliveryStatus::Dead,
                    AttemptOutcome::Permanent,
                    1_100,
                )],
            )
            .await
            .unwrap();
        assert_eq!(report.lost_leases, vec![first.delivery_id]);
        let now_held = again.iter().find(|c| c.delivery_id == first.delivery_id).unwrap();
        assert_eq!(now_held.attempt, 2);
        let report = b
            .settle(
                taker,
                vec![settlement(
                    now_held,
                    DeliveryStatus::Delivered,
                    AttemptOutcome::Delivered,
                    1_200,
                )],
            )
            .await
            .unwrap();
        assert!(report.lost_leases.is_empty());
        let detail = a.event(first.event.id).await.unwrap().unwrap();
        let d = &detail.deliveries[0];
        assert_eq!(d.status, DeliveryStatus::Delivered);
        let outcomes: Vec<_> = d.history.iter().map(|h| h.outcome).collect();
        assert_eq!(outcomes, [AttemptOutcome::Permanent, AttemptOutcome::Delivered]);
    }

    #[tokio::test]
    async fn one_key_ingested_by_many_hosts_at_once_is_one_event() {
        let db = TempDb::new().await;
        let mut stores = Vec::new();
        for _ in 0..4 {
            stores.push(PgStore::open(&db.url()).await.unwrap());
        }
        for round in 0..10 {
            let key = format!("k{round}");
            let tasks: Vec<_> = stores
                .iter()
                .map(|s| {
                    let (s, key) = (s.clone(), key.clone());
                    tokio::spawn(async move { s.ingest(vec![event(Some(&key), &["crm"])], 0).await })
                })
                .collect();
            let mut results = Vec::new();
            for task in tasks {
                results.push(task.await.unwrap().unwrap()[0]);
            }
            assert_eq!(results.iter().filter(|r| !r.duplicate).count(), 1, "{results:?}");
            assert!(results.iter().all(|r| r.id == results[0].id), "{results:?}");
        }
        assert_eq!(
            stores[0].status_counts().await.unwrap()["crm"][&DeliveryStatus::Pending],
            10
        );
    }

    #[tokio::test]
    async fn ordered_claims_wait_for_earlier_deliveries_of_the_same_key() {
        let db = TempDb::new().await;
        let s = PgStore::open(&db.url()).await.unwrap();
        s.ingest(vec![keyed("A"), keyed("A"), keyed("B"), event(None, &["crm"])], 0)
            .await
            .unwrap();
        let first = s.claim(&t("crm"), 10, "w", 0, 1_000, true).await.unwrap();
        let keys: Vec<_> = first.iter().map(|c| c.event.ordering_key.clone()).collect();
        assert_eq!(keys, [Some("A".into()), Some("B".into()), None], "the second A waits");
        let mut retry = settlement(&first[0], DeliveryStatus::Pending, AttemptOutcome::Retry, 1);
        retry.next_attempt_at = 500;
        s.settle("w", vec![retry]).await.unwrap();
        assert!(s.claim(&t("crm"), 10, "w", 100, 1_000, true).await.unwrap().is_empty());
        let head = s.claim(&t("crm"), 10, "w", 600, 2_000, true).await.unwrap();
        assert_eq!(head.len(), 1);
        s.settle(
            "w",
            vec![settlement(
                &head[0],
                DeliveryStatus::Dead,
                AttemptOutcome::Permanent,
                601,
            )],
        )
        .await
        .unwrap();
        let next = s.claim(&t("crm"), 10, "w", 602, 2_000, true).await.unwrap();
        assert_eq!(next.len(), 1, "a dead head unblocks its key");
        assert_ne!(next[0].delivery_id, head[0].delivery_id);
    }

    #[tokio::test]
    async fn pause_replay_and_filters_hold_for_every_host() {
        let db = TempDb::new().await;
        let (a, b) = (
            PgStore::open(&db.url()).await.unwrap(),
            PgStore::open(&db.url()).await.unwrap(),
        );
        a.ingest(vec![event(None, &["crm", "billing"]), event(None, &["crm"])], 0)
            .await
            .unwrap();
        assert!(a.set_target_paused(&t("crm"), true, 0).await.unwrap());
        assert!(
            !b.set_target_paused(&t("crm"), true, 0).await.unwrap(),
            "already paused"
        );
        assert!(
            !b.set_target_paused(&t("billing"), false, 0).await.unwrap(),
            "never paused"
        );
        assert!(b.claim(&t("crm"), 10, "w", 0, 1_000, false).await.unwrap().is_empty());
        assert!(b.set_target_paused(&t("crm"), false, 0).await.unwrap());
        for target in ["crm", "billing"] {
            for c in b.claim(&t(target), 10, "w", 0, 1_000, false).await.unwrap() {
                let mut dead = settlement(&c, DeliveryStatus::Dead, AttemptOutcome::Permanent, 10);
                dead.last_error = Some(format!("permanent failure: HTTP 400 from {target}"));
                b.settle("w", vec![dead]).await.unwrap();
            }
        }
        let only_crm = FailedFilter {
            target: Some(t("crm")),
            error_contains: Some("http 400".into()),
            event_type: Some("order.*".into()),
            ..FailedFilter::default()
        };
        assert_eq!(a.count_failed(only_crm.clone()).await.unwrap(), 2);
        let no_match = FailedFilter {
            event_type: Some("order_created".into()),
            ..FailedFilter::default()
        };
        assert_eq!(a.count_failed(no_match).await.unwrap(), 0, "`_` is literal in a glob");
        assert_eq!(a.list_failed(FailedFilter::default(), 0, 10).await.unwrap().len(), 3);
        assert_eq!(a.replay(only_crm.clone(), 1, 20).await.unwrap(), 1);
        assert_eq!(b.replay(only_crm.clone(), 100, 20).await.unwrap(), 1);
        assert_eq!(a.replay(only_crm, 100, 20).await.unwrap(), 0, "replay is idempotent");
        let again = b.claim(&t("crm"), 10, "w", 30, 1_000, false).await.unwrap();
        assert!(
            again.iter().all(|c| c.attempt == 1 && c.seq == 2),
            "count reset, history kept"
        );
    }

    #[tokio::test]
    async fn a_target_is_paused_only_when_no_live_host_has_it() {
        let db = TempDb::new().await;
        let (a, b) = (
            PgStore::open(&db.url()).await.unwrap(),
            PgStore::open(&db.url()).await.unwrap(),
        );
        a.ingest(vec![event(None, &["crm", "billing"])], 0).await.unwrap();
        assert_eq!(a.sync_paused(vec![t("crm"), t("billing")]).await.unwrap(), (0, 0));
        // Host b (in the middle of a deploy) has only crm: billing is still delivered by a.
        assert_eq!(b.sync_paused(vec![t("crm")]).await.unwrap(), (0, 0));
        // Once a stops, nobody has billing any more.
        a.release("a", 0).await.unwrap();
        assert_eq!(b.sync_paused(vec![t("crm")]).await.unwrap(), (1, 0));
        assert_eq!(b.sync_paused(vec![t("crm"), t("billing")]).await.unwrap(), (0, 1));
    }

    #[tokio::test]
    async fn the_rate_limit_is_one_bucket_for_all_hosts() {
        let db = TempDb::new().await;
        let (a, b) = (
            PgStore::open(&db.url()).await.unwrap(),
            PgStore::open(&db.url()).await.unwrap(),
        );
        let grant = a.take_tokens(&t("crm"), 5.0, 4).await.unwrap().unwrap();
        assert_eq!(grant.granted, 4, "the bucket starts full (burst 5)");
        let grant = b.take_tokens(&t("crm"), 5.0, 4).await.unwrap().unwrap();
        assert_eq!(grant.granted, 1, "the other host shares what is left");
        let grant = a.take_tokens(&t("crm"), 5.0, 4).await.unwrap().unwrap();
        assert_eq!(grant.granted, 0);
        assert!(
            grant.wait > Duration::ZERO && grant.wait <= Duration::from_millis(200),
            "{grant:?}"
        );
        b.give_back_tokens(&t("crm"), 5.0, 2).await.unwrap();
        assert_eq!(a.take_tokens(&t("crm"), 5.0, 4).await.unwrap().unwrap().granted, 2);
    }

    #[tokio::test]
    async fn sweeper_and_heartbeat_work_on_any_hosts_leases() {
        let db = TempDb::new().await;
        let (a, b) = (
            PgStore::open(&db.url()).await.unwrap(),
            PgStore::open(&db.url()).await.unwrap(),
        );
        a.ingest(vec![event(None, &["crm"]), event(None, &["billing"])], 0)
            .await
            .unwrap();
        a.claim(&t("crm"), 1, "alive", 0, 100, false).await.unwrap();
        a.claim(&t("billing"), 1, "gone", 0, 100, false).await.unwrap();
        assert_eq!(a.extend_leases("alive", 1_000).await.unwrap(), 1);
        assert_eq!(
            b.sweep_expired(500).await.unwrap(),
            1,
            "only the dead host's lease expired"
        );
        assert_eq!(b.next_due(&t("billing")).await.unwrap(), Some(0));
        assert_eq!(b.next_due(&t("crm")).await.unwrap(), None, "still in flight");
    }

    #[test]
    fn globs_become_like_patterns() {
        assert_eq!(glob_to_like("order.*"), "order.%");
        assert_eq!(glob_to_like("a?c"), "a_c");
        assert_eq!(glob_to_like("100%_x\\"), "100\\%\\_x\\\\");
    }

    #[test]
    fn passwords_are_redacted() {
        assert_eq!(
            redact("postgres://app:s3cret@db.internal:5432/outbox"),
            "postgres://app:***@db.internal:5432/outbox"
        );
        assert_eq!(redact("postgres://app@db/outbox"), "postgres://app@db/outbox");
        assert_eq!(redact("postgres://db/outbox"), "postgres://db/outbox");
        assert_eq!(
            redact("postgres://u:p@ss@db/x?sslmode=require"),
            "postgres://u:***@db/x?sslmode=require"
        );
    }
}
