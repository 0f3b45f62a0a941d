//! Leases after the claim: given back unstarted (unclaim), extended (heartbeat), and ended
//! without an outcome (claim take-over, sweep, release, recovery), which abandons the running
//! attempt.

use sqlx::postgres::{PgConnection, PgPool};

use super::{LeaseClock, SWEEP_CHUNK, counted, filters};
use crate::domain::Millis;
use crate::store::StoreError;
use crate::store::history::InFlight;

/// Returns up to [`SWEEP_CHUNK`] deliveries of `which` to pending (due `now`; a take-over
/// keeps their place) and writes their attempt's history row as abandoned. Rows another
/// transaction holds are skipped: they are being settled or claimed right now. Whether a lease
/// has expired is read from `clock`.
pub(super) async fn return_in_flight(
    conn: &mut PgConnection,
    which: InFlight<'_>,
    now: Millis,
    clock: LeaseClock,
) -> Result<usize, StoreError> {
    let query = counted::query_as(filters::return_in_flight(which))
        .bind(now)
        .bind(SWEEP_CHUNK);
    let query = match which {
        InFlight::ExpiredOf { target, at } => query.bind(target).bind(clock.bind(at)),
        InFlight::Expired(at) => query.bind(clock.bind(at)),
        InFlight::Owned(owner) => query.bind(owner),
        InFlight::All => query,
    };
    let returned: Vec<(i64, i32, Millis, Option<String>)> = query.fetch_all(&mut *conn).await?;
    if returned.is_empty() {
        return Ok(0);
    }
    let ids: Vec<i64> = returned.iter().map(|r| r.0).collect();
    let seqs: Vec<i32> = returned.iter().map(|r| r.1).collect();
    let starts: Vec<Millis> = returned.iter().map(|r| r.2).collect();
    let owners: Vec<Option<&str>> = returned.iter().map(|r| r.3.as_deref()).collect();
    counted::query(sql!("abandon_attempts"))
        .bind(&ids)
        .bind(&seqs)
        .bind(&starts)
        .bind(&owners)
        .bind(which.abandonment().as_str())
        .execute(&mut *conn)
        .await?;
    Ok(returned.len())
}

/// Gives back `claims` (delivery id, attempt seq) that `owner` still holds, uncounted, not due
/// before `not_before`.
pub(super) async fn unclaim(
    conn: &mut PgConnection,
    owner: &str,
    claims: &[(i64, u32)],
    not_before: Option<Millis>,
) -> Result<usize, StoreError> {
    let ids: Vec<i64> = claims.iter().map(|c| c.0).collect();
    let seqs: Vec<i32> = claims.iter().map(|c| c.1 as i32).collect();
    let n = counted::query(sql!("unclaim"))
        .bind(&ids)
        .bind(&seqs)
        .bind(owner)
        .bind(not_before)
        .execute(conn)
        .await?
        .rows_affected();
    Ok(n as usize)
}

/// Extends every lease `owner` holds that is still live to at least `lease_ms` from now, by
/// the database's clock (`clock_now` is `None`) or that time.
pub(super) async fn extend(
    pool: &PgPool,
    owner: &str,
    lease_ms: Millis,
    clock_now: Option<Millis>,
) -> Result<usize, StoreError> {
    let n = counted::query(sql!("extend_leases"))
        .bind(lease_ms)
        .bind(owner)
        .bind(clock_now)
        .execute(pool)
        .await?
        .rows_affected();
    Ok(n as usize)
}
