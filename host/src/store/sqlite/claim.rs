//! Claiming: due deliveries of one target leased to a worker, in one transaction. Expired
//! leases of the target are taken over first (their attempt abandoned), then due pending
//! deliveries; no history row is written (the in-flight delivery is the running attempt).

use rusqlite::{OptionalExtension, Transaction, params};

use super::{filters, leases, queries};
use crate::store::history::InFlight;
use crate::store::{ClaimRequest, Claimed, StoreError};

/// One claim (see [`Store::claim`](crate::store::Store::claim)).
pub(super) fn claim(tx: &Transaction<'_>, req: &ClaimRequest) -> Result<Vec<Claimed>, StoreError> {
    let target = req.target.as_str();
    let paused = tx
        .prepare_cached(sql!("target_paused"))?
        .query_row([target], |r| r.get::<_, i64>(0))
        .optional()?
        .is_some_and(|p| p != 0);
    if paused {
        return Ok(Vec::new());
    }
    // Expired leases (rare): the attempt they covered never reported back.
    let expired: bool = tx
        .prepare_cached(sql!("any_expired_lease"))?
        .query_row(params![target, req.now], |r| r.get(0))?;
    if expired {
        leases::abandon(tx, InFlight::ExpiredOf { target, at: req.now })?;
    }
    // Expired leases first, then due pending deliveries. Two statements rather than one with
    // an OR, so that each walks the due index in order and stops at the limit instead of
    // sorting every due delivery of the target.
    let mut claimed: Vec<(i64, String, u32, u32, i64)> = Vec::new();
    let statements = [
        expired.then(|| filters::claim_expired(req.ordered)),
        Some(filters::claim_pending(req.ordered)),
    ];
    for sql in statements.into_iter().flatten() {
        let left = req.limit.saturating_sub(claimed.len());
        if left == 0 {
            break;
        }
        let rows = tx
            .prepare_cached(sql)?
            .query_map(
                params![target, req.owner, req.now + req.lease_ms, req.now, left as i64],
                |r| r.try_into(),
            )?
            .collect::<Result<Vec<_>, _>>()?;
        claimed.extend(rows);
    }
    let mut out = Vec::with_capacity(claimed.len());
    // In the order they became due (ids break ties), which the lane starts them in: a
    // priority's head start holds within a claim too.
    claimed.sort_by_key(|&(id, _, _, _, due)| (due, id));
    for (delivery_id, event_id, attempt, seq, _) in claimed {
        let event = queries::load_event(tx, &event_id)?
            .ok_or_else(|| StoreError::Corrupt(format!("delivery {delivery_id} has no event {event_id}")))?;
        out.push(Claimed {
            delivery_id,
            target: req.target.clone(),
            attempt,
            seq,
            event,
        });
    }
    Ok(out)
}
