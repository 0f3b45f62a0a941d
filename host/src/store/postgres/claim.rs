//! Claiming: due deliveries of one target leased to a host. A probe first says whether the
//! target is paused by hand (then nothing is claimed) and whether any lease of it has expired;
//! if one has, a transaction returns the expired leases to the queue (their attempt abandoned,
//! keeping their place) and then claims; otherwise the claim is a single statement. It locks
//! due pending deliveries with `SKIP LOCKED` (so hosts claim side by side), leases them and
//! returns them with their events. Claims run on connections whose commits do not wait for
//! the WAL flush (see [`PgStore::relaxed_transaction`]). No history row is written (the
//! in-flight delivery is the running attempt).

use sqlx::PgExecutor;

use super::{LeaseClock, PgStore, counted, filters, leases};
use crate::store::history::InFlight;
use crate::store::rows::{self, EventColumns, count};
use crate::store::{ClaimRequest, Claimed, StoreError};

/// A claimed row: delivery id, attempts, attempt seq, its event's columns, then the time it
/// was due.
type ClaimedRow = (
    i64,
    i32,
    i32,
    String,
    String,
    String,
    String,
    Option<String>,
    Option<String>,
    i64,
    Option<String>,
    i64,
);

/// One claim (see [`Store::claim`](crate::store::Store::claim)).
pub(super) async fn claim(store: &PgStore, req: &ClaimRequest) -> Result<Vec<Claimed>, StoreError> {
    let target = req.target.as_str();
    let (paused, expired): (bool, bool) = counted::query_as(sql!("claim_probe"))
        .bind(target)
        .bind(store.clock.bind(req.now))
        .fetch_one(&store.claims)
        .await?;
    if paused {
        return Ok(Vec::new());
    }
    let claimed = if expired {
        store
            .relaxed_transaction(|mut tx| async move {
                // The attempts these leases covered never reported back.
                let which = InFlight::ExpiredOf { target, at: req.now };
                leases::return_in_flight(&mut tx, which, req.now, store.clock).await?;
                let claimed = claim_due(&mut *tx, req, store.clock).await?;
                Ok((tx, claimed))
            })
            .await?
    } else {
        claim_due(&store.claims, req, store.clock).await?
    };
    // In the order they became due (ids break ties), which the lane starts them in: a
    // priority's head start holds within a claim too.
    let mut claimed = claimed;
    claimed.sort_by_key(|row| (row.11, row.0));
    let mut out = Vec::with_capacity(claimed.len());
    for (delivery_id, attempt, seq, id, event_type, payload, headers, key, ordering_key, created_at, trace, _) in
        claimed
    {
        let columns: EventColumns = (id, event_type, payload, headers, key, ordering_key, created_at, trace);
        out.push(Claimed {
            delivery_id,
            target: req.target.clone(),
            attempt: count(attempt.into()),
            seq: count(seq.into()),
            event: rows::stored_event(columns)?,
        });
    }
    Ok(out)
}

/// The claim statement: due pending deliveries, leased, with their events. A concurrent
/// claimer's rows are skipped (locked), and in this snapshot they are still pending, so with
/// `ordered` the deliveries behind them stay blocked as they should. The lease ends
/// `lease_ms` after the claim by `clock`.
async fn claim_due<'e>(
    conn: impl PgExecutor<'e>,
    req: &ClaimRequest,
    clock: LeaseClock,
) -> Result<Vec<ClaimedRow>, StoreError> {
    Ok(counted::query_as(filters::claim_pending(req.ordered))
        .bind(req.target.as_str())
        .bind(req.now)
        .bind(req.limit as i64)
        .bind(&req.owner)
        .bind(req.lease_ms)
        .bind(clock.bind(req.now))
        .fetch_all(conn)
        .await?)
}
