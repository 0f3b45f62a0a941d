//! The host registry: which targets each serving host has loaded, kept fresh by its heartbeat
//! and removed at its shutdown, so that a target is paused (or held) only when no live host
//! has it (a rolling deploy must not pause the work another host delivers).

use sqlx::postgres::{PgConnection, PgPool};

use super::counted;
use crate::domain::{Millis, now_ms};
use crate::store::StoreError;

/// How long a host's entry lasts without a heartbeat (at least; 3 × the lease margin if longer).
const HOST_TTL_MS: Millis = 120_000;

/// Records that `host` serves with `targets` loaded, and forgets hosts gone silent.
pub(super) async fn register(
    conn: &mut PgConnection,
    host: &str,
    targets: &[String],
    now: Millis,
) -> Result<(), StoreError> {
    counted::query(sql!("register_host"))
        .bind(host)
        .bind(targets)
        .bind(now + HOST_TTL_MS)
        .execute(&mut *conn)
        .await?;
    counted::query(sql!("forget_expired_hosts"))
        .bind(now)
        .execute(&mut *conn)
        .await?;
    Ok(())
}

/// The heartbeat of `host`, whose leases now last `lease_ms` more.
pub(super) async fn refresh(pool: &PgPool, host: &str, lease_ms: Millis) -> Result<(), StoreError> {
    let now = now_ms();
    let ttl = HOST_TTL_MS.max(3 * lease_ms);
    counted::query(sql!("refresh_host"))
        .bind(host)
        .bind(now + ttl)
        .execute(pool)
        .await?;
    Ok(())
}

/// `host` stops serving.
pub(super) async fn forget(pool: &PgPool, host: &str) -> Result<(), StoreError> {
    counted::query(sql!("forget_host")).bind(host).execute(pool).await?;
    Ok(())
}
