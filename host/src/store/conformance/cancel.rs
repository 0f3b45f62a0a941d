//! Scenarios of cancellation: what it takes (waiting, held and dead deliveries), what it
//! leaves (a running attempt, the other final ones), by event id or producer key, and what a
//! cancelled delivery is afterwards: final for claims, the FIFO, replay and retention.

use super::admin::finish;
use super::{Backend, claim, event, keyed, ordered, settlement, t};
use crate::domain::{AttemptOutcome, DeliveryStatus, EventId, Millis, ProducerKey};
use crate::store::{Cancellation, EventRef, FailedFilter, Store};

/// `(target, was, status)` of each delivery, in target order.
fn outcome(c: &Cancellation) -> Vec<(String, DeliveryStatus, DeliveryStatus)> {
    c.deliveries
        .iter()
        .map(|d| (d.target.to_string(), d.was, d.status))
        .collect()
}

fn key(k: &str) -> EventRef {
    EventRef::ProducerKey(ProducerKey::try_from(k.to_string()).unwrap())
}

pub(super) async fn cancel_takes_waiting_held_and_dead_deliveries_and_leaves_the_rest(s: &dyn Store) {
    use DeliveryStatus::{Cancelled, Dead, Delivered, Discarded, InFlight, Paused, Pending};
    let targets = ["audit", "billing", "crm", "ledger", "search", "tips"];
    let id = s.ingest(vec![event(Some("order-7"), &targets)], 0).await.unwrap()[0].id;
    finish(s, "billing", Delivered, 10, None).await;
    finish(s, "audit", Dead, 10, Some("HTTP 400")).await;
    finish(s, "tips", Discarded, 10, Some("HTTP 500")).await;
    let running = s.claim(claim("ledger", 10, "w", 10, 60_000)).await.unwrap();
    assert_eq!(running.len(), 1);
    assert_eq!(
        s.hold_target(&t("search"), "plugin does not load", 10).await.unwrap(),
        1
    );

    let done = s.cancel(EventRef::Id(id), 20).await.unwrap().unwrap();
    assert_eq!(done.event_id, id);
    let expect = |rows: &[(&str, DeliveryStatus, DeliveryStatus)]| -> Vec<(String, DeliveryStatus, DeliveryStatus)> {
        rows.iter().map(|(t, a, b)| (t.to_string(), *a, *b)).collect()
    };
    assert_eq!(
        outcome(&done),
        expect(&[
            ("audit", Dead, Cancelled),
            ("billing", Delivered, Delivered),
            ("crm", Pending, Cancelled),
            ("ledger", InFlight, InFlight),
            ("search", Paused, Cancelled),
            ("tips", Discarded, Discarded),
        ])
    );
    let detail = s.event(id).await.unwrap().unwrap();
    let status = |target: &str| detail.deliveries.iter().find(|d| d.target.as_str() == target).unwrap();
    assert_eq!(status("crm").status, Cancelled);
    assert_eq!(status("crm").next_attempt_at, None, "nothing is due any more");
    assert_eq!(
        (status("audit").status, status("audit").history.len()),
        (Cancelled, 1),
        "the history is kept"
    );
    assert_eq!(status("audit").last_error.as_deref(), Some("HTTP 400"));

    // Cancelled is final: not claimed (also once the held target is live again), not failed,
    // not replayed, counted as its own status.
    assert!(s.claim(claim("crm", 10, "w", 30, 60_000)).await.unwrap().is_empty());
    assert_eq!(
        s.sync_paused(targets.iter().map(|n| t(n)).collect()).await.unwrap(),
        (0, 0)
    );
    assert!(s.claim(claim("search", 10, "w", 30, 60_000)).await.unwrap().is_empty());
    assert_eq!(s.next_due(&t("crm")).await.unwrap(), None);
    let audit = FailedFilter {
        target: Some(t("audit")),
        ..FailedFilter::default()
    };
    assert_eq!(s.count_failed(audit.clone()).await.unwrap(), 0);
    assert_eq!(s.replay(audit, 10, 30).await.unwrap(), 0);
    assert_eq!(
        s.count_failed(FailedFilter::default()).await.unwrap(),
        1,
        "the discarded one"
    );
    let counts = s.status_counts().await.unwrap();
    assert_eq!(counts["crm"][&Cancelled], 1);
    assert_eq!(counts["ledger"][&InFlight], 1);

    // The running attempt finishes; a retry makes it pending, and cancelling again takes it
    // (by the producer's key this time); what is already cancelled stays so.
    let mut retry = settlement(&running[0], Pending, AttemptOutcome::Retry, 40);
    retry.next_attempt_at = 50;
    assert!(s.settle("w", vec![retry]).await.unwrap().lost_leases.is_empty());
    let again = s.cancel(key("order-7"), 60).await.unwrap().unwrap();
    assert_eq!(again.event_id, id);
    assert_eq!(
        outcome(&again),
        expect(&[
            ("audit", Cancelled, Cancelled),
            ("billing", Delivered, Delivered),
            ("crm", Cancelled, Cancelled),
            ("ledger", Pending, Cancelled),
            ("search", Cancelled, Cancelled),
            ("tips", Discarded, Discarded),
        ])
    );
    assert!(s.claim(claim("ledger", 10, "w", 60, 60_000)).await.unwrap().is_empty());
    let third = s.cancel(EventRef::Id(id), 70).await.unwrap().unwrap();
    assert!(third.deliveries.iter().all(|d| d.was == d.status), "idempotent");
}

pub(super) async fn cancel_of_an_unknown_event_or_key_changes_nothing(s: &dyn Store) {
    let id = s.ingest(vec![event(Some("known"), &["crm"])], 0).await.unwrap()[0].id;
    assert_eq!(s.cancel(EventRef::Id(EventId::new()), 10).await.unwrap(), None);
    assert_eq!(s.cancel(key("unknown"), 10).await.unwrap(), None);
    assert_eq!(
        s.event(id).await.unwrap().unwrap().deliveries[0].status,
        DeliveryStatus::Pending
    );
    // An event routed nowhere is found, with nothing to cancel.
    let nowhere = s.ingest(vec![event(None, &[])], 0).await.unwrap()[0].id;
    let done = s.cancel(EventRef::Id(nowhere), 10).await.unwrap().unwrap();
    assert!(done.deliveries.is_empty());
    // The ledger outlives its event: the key is known, the event gone.
    s.cancel(EventRef::Id(id), 10).await.unwrap().unwrap();
    const DAY: Millis = 24 * 3_600_000;
    assert_eq!(s.prune_finished(DAY, 10).await.unwrap(), 2, "cancelled is finished");
    assert_eq!(s.cancel(key("known"), 20).await.unwrap(), None);
}

pub(super) async fn a_cancelled_head_unblocks_its_key_and_its_event_is_pruned(s: &dyn Store) {
    let first = s.ingest(vec![keyed("k")], 0).await.unwrap()[0].id;
    let second = s.ingest(vec![keyed("k")], 0).await.unwrap()[0].id;
    assert_eq!(s.claim(ordered("crm", 10, "w", 0, 60_000)).await.unwrap().len(), 1);
    // The head is in flight: cancelling leaves it; its retry is then cancelled.
    let c = s.cancel(EventRef::Id(first), 1).await.unwrap().unwrap();
    assert_eq!(c.deliveries[0].status, DeliveryStatus::InFlight);
    assert_eq!(s.sweep_expired(60_001).await.unwrap(), 1);
    s.cancel(EventRef::Id(first), 60_002).await.unwrap().unwrap();
    let next = s.claim(ordered("crm", 10, "w", 60_003, 120_000)).await.unwrap();
    assert_eq!(next.len(), 1, "the cancelled head holds up no one");
    assert_eq!(next[0].event.id, second);
    // Retention: a finished event (all cancelled) is pruned, one in flight kept.
    assert_eq!(s.prune_finished(200_000, 10).await.unwrap(), 1);
    assert!(s.event(first).await.unwrap().is_none());
    assert!(s.event(second).await.unwrap().is_some());
}

/// Two handles (the CLI beside `serve`, or two hosts): a cancellation on one is seen by the
/// other's claims.
pub(super) async fn a_cancellation_on_one_handle_holds_for_the_other(db: &dyn Backend) {
    let (a, b) = (db.open().await, db.open().await);
    let id = a.ingest(vec![event(None, &["crm"])], 0).await.unwrap()[0].id;
    b.cancel(EventRef::Id(id), 1).await.unwrap().unwrap();
    assert!(a.claim(claim("crm", 10, "w", 2, 60_000)).await.unwrap().is_empty());
}
