//! Claiming: due deliveries of one target leased to a host, in one transaction. Expired leases
//! of the target go back to the queue first (their attempt abandoned), keeping their place;
//! then due pending deliveries are locked with `SKIP LOCKED`, so hosts claim side by side. No
//! history row is written (the in-flight delivery is the running attempt).

use std::collections::BTreeMap;

use sqlx::postgres::PgConnection;

use super::{counted, filters, leases};
use crate::store::history::InFlight;
use crate::store::rows::{self, EventColumns, count};
use crate::store::{ClaimRequest, Claimed, StoreError};

/// One claim (see [`Store::claim`](crate::store::Store::claim)).
pub(super) async fn claim(conn: &mut PgConnection, req: &ClaimRequest) -> Result<Vec<Claimed>, StoreError> {
    let target = req.target.as_str();
    let paused: Option<bool> = counted::query_scalar(sql!("target_paused"))
        .bind(target)
        .fetch_optional(&mut *conn)
        .await?;
    if paused == Some(true) {
        return Ok(Vec::new());
    }
    // Expired leases of this target: the attempt they covered never reported back.
    leases::return_in_flight(conn, InFlight::ExpiredOf { target, at: req.now }, req.now).await?;
    // A concurrent claimer's rows are skipped (locked), and in this snapshot they are still
    // pending, so with `ordered` the deliveries behind them stay blocked as they should.
    let claimed: Vec<(i64, String, i32, i32)> = counted::query_as(filters::claim_pending(req.ordered))
        .bind(target)
        .bind(req.now)
        .bind(req.limit as i64)
        .bind(&req.owner)
        .bind(req.lease_until)
        .fetch_all(&mut *conn)
        .await?;
    if claimed.is_empty() {
        return Ok(Vec::new());
    }
    let event_ids: Vec<&str> = claimed.iter().map(|c| c.1.as_str()).collect();
    let found: Vec<EventColumns> = counted::query_as(sql!("select_events"))
        .bind(&event_ids)
        .fetch_all(&mut *conn)
        .await?;
    let mut events = BTreeMap::new();
    for columns in found {
        let e = rows::stored_event(columns)?;
        events.insert(e.id.to_string(), e);
    }
    let mut out = Vec::with_capacity(claimed.len());
    for (delivery_id, event_id, attempt, seq) in claimed {
        let event = events
            .get(&event_id)
            .cloned()
            .ok_or_else(|| StoreError::Corrupt(format!("delivery {delivery_id} has no event {event_id}")))?;
        out.push(Claimed {
            delivery_id,
            target: req.target.clone(),
            attempt: count(attempt.into()),
            seq: count(seq.into()),
            event,
        });
    }
    out.sort_by_key(|c| c.delivery_id);
    Ok(out)
}
