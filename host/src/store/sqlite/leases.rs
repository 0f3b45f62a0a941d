//! Leases after the claim: given back unstarted (unclaim), extended (heartbeat), and ended
//! without an outcome (sweep, release, recovery), which abandons the running attempt.

use rusqlite::{Transaction, params};

use crate::domain::Millis;
use crate::store::StoreError;
use crate::store::history::InFlight;

/// Writes the history row of the running attempt of each delivery of `which` as abandoned.
pub(super) fn abandon(tx: &Transaction<'_>, which: InFlight<'_>) -> Result<(), StoreError> {
    let why = which.abandonment().as_str();
    match which {
        InFlight::ExpiredOf { target, at } => tx
            .prepare_cached(sql!("abandon_expired_of_target"))?
            .execute(params![why, target, at])?,
        InFlight::Expired(at) => tx.prepare_cached(sql!("abandon_expired"))?.execute(params![why, at])?,
        InFlight::Owned(owner) => tx.prepare_cached(sql!("abandon_owned"))?.execute(params![why, owner])?,
        InFlight::All => tx.prepare_cached(sql!("abandon_all"))?.execute(params![why])?,
    };
    Ok(())
}

/// Returns the deliveries of `which` to pending, due `now`, abandoning their attempts.
pub(super) fn return_in_flight(tx: &Transaction<'_>, which: InFlight<'_>, now: Millis) -> Result<usize, StoreError> {
    if let InFlight::ExpiredOf { target, .. } = which {
        // A claim takes them over in place (see `claim`).
        return Err(StoreError::Task(format!(
            "expired leases of {target} are not returned but taken over"
        )));
    }
    abandon(tx, which)?;
    let n = match which {
        InFlight::Expired(at) => tx.prepare_cached(sql!("return_expired"))?.execute(params![now, at])?,
        InFlight::Owned(owner) => tx.prepare_cached(sql!("return_owned"))?.execute(params![now, owner])?,
        InFlight::All => tx.prepare_cached(sql!("return_all"))?.execute(params![now])?,
        InFlight::ExpiredOf { .. } => unreachable!("refused above"),
    };
    Ok(n)
}

/// Gives back `claims` (delivery id, attempt seq) that `owner` still holds, uncounted, not due
/// before `not_before`.
pub(super) fn unclaim(
    tx: &Transaction<'_>,
    owner: &str,
    claims: &[(i64, u32)],
    not_before: Option<Millis>,
) -> Result<usize, StoreError> {
    let mut give_back = tx.prepare_cached(sql!("unclaim"))?;
    let mut given_back = 0;
    for (id, seq) in claims {
        given_back += give_back.execute(params![id, owner, seq, not_before])?;
    }
    Ok(given_back)
}

/// Extends every lease `owner` holds that is still live at `now` to at least `lease_until`.
pub(super) fn extend(tx: &Transaction<'_>, owner: &str, now: Millis, lease_until: Millis) -> Result<usize, StoreError> {
    Ok(tx
        .prepare_cached(sql!("extend_leases"))?
        .execute(params![lease_until, owner, now])?)
}
