//! The PostgreSQL schema: migrations applied in order, each in its own transaction, recorded in
//! `outboxd_schema`, under an advisory lock so that hosts starting together migrate once. A
//! database newer than this binary is refused.

use sqlx::Connection as _;
use sqlx::Executor as _;
use sqlx::postgres::PgConnection;

use crate::domain::now_ms;
use crate::store::StoreError;

/// Schema migrations, applied in order; `outboxd_schema` records the applied ones.
pub(super) const MIGRATIONS: &[&str] = &[
    include_str!("migrations/0001_initial.sql"),
    include_str!("migrations/0002_leaner_writes.sql"),
    include_str!("migrations/0003_readiness_probe.sql"),
    include_str!("migrations/0004_receiver_responses.sql"),
    include_str!("migrations/0005_attempt_details.sql"),
    include_str!("migrations/0006_cancelled_deliveries.sql"),
    include_str!("migrations/0007_erased_payloads.sql"),
    include_str!("migrations/0008_replay_jobs.sql"),
    include_str!("migrations/0009_trace_context.sql"),
];

/// The advisory lock that serialises migrations across hosts ("outboxd" in ASCII).
const MIGRATION_LOCK: i64 = 0x006f_7574_626f_7864;

/// Applies the missing migrations on `conn`, its own session, and closes it: the advisory lock
/// belongs to the session, so closing it releases the lock whatever happened.
pub(super) async fn migrate(mut conn: PgConnection) -> Result<(), StoreError> {
    let migrated = migrate_locked(&mut conn).await;
    let _ = conn.close().await;
    migrated
}

async fn migrate_locked(conn: &mut PgConnection) -> Result<(), StoreError> {
    sqlx::query(sql!("advisory_lock"))
        .bind(MIGRATION_LOCK)
        .execute(&mut *conn)
        .await?;
    sqlx::query(sql!("create_schema_table")).execute(&mut *conn).await?;
    let version: i32 = sqlx::query_scalar(sql!("schema_version")).fetch_one(&mut *conn).await?;
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
        sqlx::query(sql!("record_migration"))
            .bind((i + 1) as i32)
            .bind(now_ms())
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        tracing::info!(version = i + 1, "applied PostgreSQL schema migration");
    }
    Ok(())
}
