//! The conformance suite: what every [`Store`] must do, written once as scenarios over
//! `&dyn Store` (or over a [`Backend`] when a scenario needs a second handle on the same
//! database or a row an older version left), and run on a fresh SQLite file and on a fresh
//! PostgreSQL database (on `OUTBOXD_TEST_PG_URL`, default `postgres://postgres@127.0.0.1:5432`).
//! Each (scenario, backend) pair is a test of its own: `on_sqlite::<scenario>`,
//! `on_postgres::<scenario>`.

mod admin;
mod batches;
mod cancel;
mod claims;
mod erase;
mod history;
mod replay_jobs;
mod search;

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use async_trait::async_trait;
use sqlx::Connection as _;
use sqlx::postgres::PgConnection;

use crate::domain::{AttemptOutcome, DeliveryStatus, EventId, EventType, Millis, ProducerKey, TargetName};
use crate::store::postgres::PgStore;
use crate::store::sqlite::SqliteStore;
use crate::store::{ClaimRequest, Claimed, NewEvent, Settlement, Store};

/// A fresh database of one backend.
#[async_trait]
pub(crate) trait Backend: Send + Sync {
    /// A new handle on the database (another host, or the CLI beside `serve`).
    async fn open(&self) -> Arc<dyn Store>;
    /// Writes the `running` history row that an older version wrote at claim.
    async fn plant_running_row(&self, delivery_id: i64, n: u32, started_at: Millis);
}

/// A SQLite file in a temporary directory; the first handle is `serve`'s (exclusive), the
/// others clients'.
pub(crate) struct SqliteBackend {
    _dir: tempfile::TempDir,
    path: PathBuf,
    served: AtomicBool,
}

impl SqliteBackend {
    pub(crate) fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("o.db");
        Self {
            _dir: dir,
            path,
            served: AtomicBool::new(false),
        }
    }
}

#[async_trait]
impl Backend for SqliteBackend {
    async fn open(&self) -> Arc<dyn Store> {
        if self.served.swap(true, Ordering::SeqCst) {
            Arc::new(SqliteStore::open(&self.path).unwrap())
        } else {
            Arc::new(SqliteStore::open_exclusive(&self.path).unwrap())
        }
    }

    async fn plant_running_row(&self, delivery_id: i64, n: u32, started_at: Millis) {
        let conn = rusqlite::Connection::open(&self.path).unwrap();
        conn.execute(
            "INSERT INTO attempts (delivery_id, n, started_at, outcome) VALUES (?1, ?2, ?3, 'running')",
            rusqlite::params![delivery_id, n, started_at],
        )
        .unwrap();
    }
}

/// A fresh database on the server at `OUTBOXD_TEST_PG_URL`, dropped when the value is dropped.
pub(crate) struct TempDb {
    server: String,
    name: String,
}

impl TempDb {
    pub(crate) async fn new() -> Self {
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

    pub(crate) fn url(&self) -> String {
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

#[async_trait]
impl Backend for TempDb {
    /// A store on the caller's clock, like SQLite: the scenarios play on a made-up timeline.
    /// The database's clock, which PostgreSQL uses outside of tests, has tests of its own
    /// (`postgres::tests`).
    async fn open(&self) -> Arc<dyn Store> {
        Arc::new(PgStore::open_on_caller_clock(&self.url()).await.unwrap())
    }

    async fn plant_running_row(&self, delivery_id: i64, n: u32, started_at: Millis) {
        let mut conn = PgConnection::connect(&self.url()).await.unwrap();
        sqlx::query(
            "INSERT INTO attempts (delivery_id, n, started_at, outcome, owner) VALUES ($1, $2, $3, 'running', 'old')",
        )
        .bind(delivery_id)
        .bind(n as i32)
        .bind(started_at)
        .execute(&mut conn)
        .await
        .unwrap();
    }
}

pub(crate) fn t(name: &str) -> TargetName {
    name.parse().unwrap()
}

/// An `order.created` event for `targets`, with producer key `key`.
pub(crate) fn event(key: Option<&str>, targets: &[&str]) -> NewEvent {
    NewEvent {
        id: EventId::new(),
        event_type: EventType::try_from("order.created".to_string()).unwrap(),
        payload: r#"{"n":1}"#.into(),
        headers: vec![("x-source".into(), "test".into())],
        idempotency_key: key.map(|k| ProducerKey::try_from(k.to_string()).unwrap()),
        ordering_key: None,
        targets: targets.iter().map(|n| t(n)).collect(),
        due_at: None,
        traceparent: None,
    }
}

/// An event for `crm` with ordering key `key`.
pub(crate) fn keyed(key: &str) -> NewEvent {
    NewEvent {
        ordering_key: Some(key.into()),
        ..event(None, &["crm"])
    }
}

/// An unordered claim at `now`, leased until `lease_until`.
pub(crate) fn claim(target: &str, limit: usize, owner: &str, now: Millis, lease_until: Millis) -> ClaimRequest {
    ClaimRequest {
        target: t(target),
        limit,
        owner: owner.into(),
        now,
        lease_ms: lease_until - now,
        ordered: false,
    }
}

/// An ordered claim.
pub(crate) fn ordered(target: &str, limit: usize, owner: &str, now: Millis, lease_until: Millis) -> ClaimRequest {
    ClaimRequest {
        ordered: true,
        ..claim(target, limit, owner, now, lease_until)
    }
}

/// The outcome of `c`, finished at `at` after 3 ms, by plugin version `abc`.
pub(crate) fn settlement(c: &Claimed, status: DeliveryStatus, outcome: AttemptOutcome, at: Millis) -> Settlement {
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
        response: None,
        detail: None,
        emit: Vec::new(),
    }
}

/// One test per (scenario, backend): `stores` take `&dyn Store`, `backends` `&dyn Backend`.
macro_rules! conformance {
    (stores: [$($sm:ident::$s:ident),* $(,)?], backends: [$($bm:ident::$b:ident),* $(,)?] $(,)?) => {
        conformance!(@on on_sqlite, SqliteBackend::new(), [$($sm::$s),*], [$($bm::$b),*]);
        conformance!(@on on_postgres, TempDb::new().await, [$($sm::$s),*], [$($bm::$b),*]);
    };
    (@on $module:ident, $backend:expr, [$($sm:ident::$s:ident),*], [$($bm:ident::$b:ident),*]) => {
        mod $module {
            #[allow(unused_imports)]
            use super::{SqliteBackend, TempDb, Backend as _};
            $(
                #[tokio::test]
                async fn $s() {
                    let backend = $backend;
                    let store = backend.open().await;
                    super::$sm::$s(store.as_ref()).await;
                }
            )*
            $(
                #[tokio::test]
                async fn $b() {
                    let backend = $backend;
                    super::$bm::$b(&backend).await;
                }
            )*
        }
    };
}

conformance! {
    stores: [
        claims::ingest_writes_one_delivery_per_target_and_dedupes_keys,
        claims::an_events_trace_context_comes_back_with_its_claim_and_detail,
        claims::claims_respect_due_time_and_limit,
        claims::a_lease_is_exclusive_until_it_expires,
        claims::retry_reschedules_and_release_and_recovery_return_work,
        claims::ordered_claims_wait_for_earlier_deliveries_of_the_same_key,
        claims::ordered_head_that_dies_unblocks_its_key,
        claims::ordered_head_that_retries_then_dies_unblocks_its_key,
        claims::settle_emits_events_only_when_the_lease_holds,
        claims::lost_leases_are_reported_in_id_order,
        claims::a_delivery_given_back_to_wait_is_not_due_before_its_time,
        claims::a_delivery_is_due_at_the_time_given_and_keeps_its_keys_order,
        history::a_running_attempt_is_the_in_flight_delivery_until_it_settles,
        history::every_abandonment_records_its_reason,
        history::a_late_outcome_replaces_the_abandoned_row,
        history::each_attempt_keeps_the_receivers_response,
        admin::held_targets_wait_until_they_are_live_again,
        admin::failed_filters_narrow_listing_count_and_replay,
        admin::prune_deletes_finished_events_failed_deliveries_and_old_keys,
        admin::oldest_due_is_per_target_and_only_due,
        admin::delivery_ids_are_never_reused_after_a_prune,
        cancel::cancel_takes_waiting_held_and_dead_deliveries_and_leaves_the_rest,
        cancel::cancel_of_an_unknown_event_or_key_changes_nothing,
        cancel::a_cancelled_head_unblocks_its_key_and_its_event_is_pruned,
        erase::erasure_waits_for_final_deliveries_and_keeps_the_event,
        erase::retention_erases_payloads_of_old_finished_events_only,
        replay_jobs::a_replay_job_takes_what_failed_before_it_chunk_by_chunk,
        replay_jobs::a_capped_replay_job_stops_at_its_cap,
        search::search_narrows_by_each_filter_newest_first_and_pages_by_id,
        search::backlog_counts_what_is_still_to_be_done,
    ],
    backends: [
        claims::unclaimed_deliveries_are_pending_again_as_if_never_claimed,
        claims::heartbeat_keeps_leases_and_sweeper_returns_expired_ones,
        claims::heartbeat_does_not_extend_an_expired_lease,
        history::a_running_row_of_an_older_version_is_abandoned_or_replaced,
        admin::replay_resets_attempts_keeps_history_and_is_idempotent,
        admin::paused_targets_claim_nothing_until_resumed,
        batches::a_batched_settle_changes_only_the_leases_still_held,
        batches::concurrent_ingests_of_shared_keys_make_one_event_per_key,
        cancel::a_cancellation_on_one_handle_holds_for_the_other,
        replay_jobs::a_replay_job_resumes_from_its_cursor_and_stops_when_cancelled,
        replay_jobs::handles_working_one_job_together_replay_each_delivery_once,
    ],
}
