//! The cluster-wide rate limit of each target: one token bucket row, refilled by the
//! database's clock, taken from by every host.

use std::time::Duration;

use sqlx::postgres::{PgConnection, PgPool};

use super::counted;
use crate::domain::TargetName;
use crate::store::{StoreError, TokenGrant};

/// Takes up to `want` tokens of `target`'s bucket (`rate` per second, burst `max(rate, 1)`).
pub(super) async fn take(
    conn: &mut PgConnection,
    target: &TargetName,
    rate: f64,
    want: usize,
) -> Result<TokenGrant, StoreError> {
    let burst = rate.max(1.0);
    counted::query(sql!("create_bucket"))
        .bind(target.as_str())
        .bind(burst)
        .execute(&mut *conn)
        .await?;
    let (tokens, elapsed): (f64, f64) = counted::query_as(sql!("lock_bucket"))
        .bind(target.as_str())
        .fetch_one(&mut *conn)
        .await?;
    let tokens = (tokens + elapsed * rate).min(burst);
    let granted = (tokens.floor().max(0.0) as usize).min(want);
    let left = tokens - granted as f64;
    counted::query(sql!("update_bucket"))
        .bind(target.as_str())
        .bind(left)
        .bind(elapsed)
        .execute(&mut *conn)
        .await?;
    let wait = if granted > 0 || left >= 1.0 {
        Duration::ZERO
    } else {
        Duration::from_secs_f64((1.0 - left) / rate)
    };
    Ok(TokenGrant { granted, wait })
}

/// Gives back `n` tokens taken but not used.
pub(super) async fn give_back(pool: &PgPool, target: &TargetName, rate: f64, n: usize) -> Result<(), StoreError> {
    if n == 0 {
        return Ok(());
    }
    counted::query(sql!("give_back_tokens"))
        .bind(target.as_str())
        .bind(n as f64)
        .bind(rate.max(1.0))
        .execute(pool)
        .await?;
    Ok(())
}
