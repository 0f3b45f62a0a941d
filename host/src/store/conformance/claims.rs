//! Scenarios of the delivery path: ingest, claim, lease, settle, give back, sweep, release,
//! recovery, per-key FIFO.

use super::{Backend, claim, event, keyed, ordered, settlement, t};
use crate::domain::{AttemptOutcome, DeliveryStatus, EventType, ProducerKey};
use crate::store::{Ingested, NewEvent, Store};
use crate::telemetry::trace_context::TraceParent;

pub(super) async fn an_events_trace_context_comes_back_with_its_claim_and_detail(s: &dyn Store) {
    let tp = TraceParent::parse("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01").unwrap();
    let traced = NewEvent {
        traceparent: Some(tp),
        ..event(None, &["crm"])
    };
    let traced_id = traced.id;
    s.ingest(vec![traced, event(None, &["crm"])], 0).await.unwrap();
    let claimed = s.claim(claim("crm", 2, "w", 0, 100)).await.unwrap();
    assert_eq!(claimed.len(), 2);
    for c in &claimed {
        let want = (c.event.id == traced_id).then_some(tp);
        assert_eq!(
            c.event.traceparent, want,
            "the claim returns the event's trace context as ingested"
        );
    }
    let detail = s.event(traced_id).await.unwrap().unwrap();
    assert_eq!(detail.event.traceparent, Some(tp));
}

pub(super) async fn ingest_writes_one_delivery_per_target_and_dedupes_keys(s: &dyn Store) {
    let first = s
        .ingest(vec![event(Some("k1"), &["crm", "billing"])], 10)
        .await
        .unwrap();
    assert!(!first[0].duplicate);
    let again = s
        .ingest(vec![event(Some("k1"), &["crm", "billing"])], 20)
        .await
        .unwrap();
    assert_eq!(
        again[0],
        Ingested {
            id: first[0].id,
            duplicate: true
        }
    );
    // The same key twice in one batch: one event.
    let batch = s
        .ingest(vec![event(Some("k2"), &["crm"]), event(Some("k2"), &["crm"])], 30)
        .await
        .unwrap();
    assert_eq!((batch[0].duplicate, batch[1].duplicate), (false, true));
    assert_eq!(batch[1].id, batch[0].id);
    let detail = s.event(first[0].id).await.unwrap().unwrap();
    assert_eq!(detail.deliveries.len(), 2);
    assert!(detail.deliveries.iter().all(|d| d.status == DeliveryStatus::Pending));
    assert!(detail.deliveries.iter().all(|d| d.next_attempt_at == Some(10)));
    assert_eq!(detail.event.headers, vec![("x-source".to_string(), "test".to_string())]);
    assert_eq!(detail.event.idempotency_key.as_deref(), Some("k1"));
    assert_eq!(detail.event.created_at, 10);
    let counts = s.status_counts().await.unwrap();
    assert_eq!(counts["crm"][&DeliveryStatus::Pending], 2);
    assert_eq!(counts["billing"][&DeliveryStatus::Pending], 1);
}

pub(super) async fn claims_respect_due_time_and_limit(s: &dyn Store) {
    s.ingest((0..5).map(|_| event(None, &["crm"])).collect(), 100)
        .await
        .unwrap();
    assert!(s.claim(claim("crm", 10, "a", 99, 1_000)).await.unwrap().is_empty());
    let first = s.claim(claim("crm", 3, "a", 100, 1_000)).await.unwrap();
    assert_eq!(first.len(), 3);
    assert!(
        first.windows(2).all(|w| w[0].delivery_id < w[1].delivery_id),
        "in id order"
    );
    assert!(first.iter().all(|c| c.attempt == 1 && c.seq == 1));
    assert_eq!(first[0].event.payload, r#"{"n":1}"#);
    assert_eq!(s.claim(claim("crm", 3, "a", 100, 1_000)).await.unwrap().len(), 2);
    assert!(s.claim(claim("billing", 3, "a", 100, 1_000)).await.unwrap().is_empty());
    assert!(s.claim(claim("crm", 0, "a", 100, 1_000)).await.unwrap().is_empty());
}

pub(super) async fn a_lease_is_exclusive_until_it_expires(s: &dyn Store) {
    s.ingest(vec![event(None, &["crm"])], 0).await.unwrap();
    let a = s.claim(claim("crm", 10, "a", 100, 1_000)).await.unwrap();
    assert_eq!(a.len(), 1);
    assert_eq!(a[0].attempt, 1);
    assert!(s.claim(claim("crm", 10, "b", 500, 2_000)).await.unwrap().is_empty());
    // After expiry another worker takes it over; the first attempt is abandoned.
    let b = s.claim(claim("crm", 10, "b", 1_000, 2_000)).await.unwrap();
    assert_eq!(b.len(), 1);
    assert_eq!((b[0].attempt, b[0].seq), (2, 2));
    let d = &s.event(a[0].event.id).await.unwrap().unwrap().deliveries[0];
    let history: Vec<_> = d.history.iter().map(|h| (h.n, h.started_at, h.outcome)).collect();
    assert_eq!(
        history,
        [(1, 100, AttemptOutcome::Abandoned), (2, 1_000, AttemptOutcome::Running)]
    );
    // The first worker's late outcome cannot change the delivery any more...
    let late = settlement(&a[0], DeliveryStatus::Dead, AttemptOutcome::Permanent, 1_100);
    let report = s.settle("a", vec![late]).await.unwrap();
    assert_eq!(report.lost_leases, vec![a[0].delivery_id]);
    // ...but the current holder's can.
    let held = settlement(&b[0], DeliveryStatus::Delivered, AttemptOutcome::Delivered, 1_200);
    let report = s.settle("b", vec![held]).await.unwrap();
    assert!(report.lost_leases.is_empty());
    let detail = s.event(a[0].event.id).await.unwrap().unwrap();
    let d = &detail.deliveries[0];
    assert_eq!(d.status, DeliveryStatus::Delivered);
    assert_eq!(d.delivered_at, Some(1_200));
    assert_eq!(d.next_attempt_at, None);
    let outcomes: Vec<_> = d.history.iter().map(|h| h.outcome).collect();
    assert_eq!(outcomes, [AttemptOutcome::Permanent, AttemptOutcome::Delivered]);
}

pub(super) async fn retry_reschedules_and_release_and_recovery_return_work(s: &dyn Store) {
    s.ingest(vec![event(None, &["crm"]), event(None, &["crm"])], 0)
        .await
        .unwrap();
    let c = s.claim(claim("crm", 1, "a", 0, 1_000)).await.unwrap();
    let mut retry = settlement(&c[0], DeliveryStatus::Pending, AttemptOutcome::Retry, 10);
    retry.next_attempt_at = 500;
    retry.last_error = Some("503".into());
    s.settle("a", vec![retry]).await.unwrap();
    assert_eq!(
        s.next_due(&t("crm")).await.unwrap(),
        Some(0),
        "the other delivery is still due"
    );
    let d = &s.event(c[0].event.id).await.unwrap().unwrap().deliveries[0];
    assert_eq!((d.status, d.next_attempt_at), (DeliveryStatus::Pending, Some(500)));
    assert_eq!(d.last_error.as_deref(), Some("503"));

    let other = s.claim(claim("crm", 1, "a", 10, 1_000)).await.unwrap();
    assert_eq!(other.len(), 1);
    assert_eq!(s.next_due(&t("crm")).await.unwrap(), Some(500));
    assert_eq!(s.release("a", 20).await.unwrap(), 1);
    assert_eq!(s.next_due(&t("crm")).await.unwrap(), Some(20), "released: due now");

    let again = s.claim(claim("crm", 5, "b", 600, 2_000)).await.unwrap();
    assert_eq!(again.len(), 2);
    assert_eq!(s.recover_orphans(700).await.unwrap(), 2);
    assert_eq!(s.next_due(&t("crm")).await.unwrap(), Some(700), "recovered: due now");
    let detail = s.event(again[0].event.id).await.unwrap().unwrap();
    let d = &detail.deliveries[0];
    assert_eq!(d.status, DeliveryStatus::Pending);
    assert_eq!(d.history.last().unwrap().outcome, AttemptOutcome::Abandoned);
}

pub(super) async fn ordered_claims_wait_for_earlier_deliveries_of_the_same_key(s: &dyn Store) {
    s.ingest(vec![keyed("A"), keyed("A"), keyed("B"), event(None, &["crm"])], 0)
        .await
        .unwrap();
    let first = s.claim(ordered("crm", 10, "w", 0, 1_000)).await.unwrap();
    let keys: Vec<_> = first.iter().map(|c| c.event.ordering_key.clone()).collect();
    assert_eq!(keys, [Some("A".into()), Some("B".into()), None], "the second A waits");
    // The head of A fails and is rescheduled: A stays blocked, nothing else is.
    let mut retry = settlement(&first[0], DeliveryStatus::Pending, AttemptOutcome::Retry, 1);
    retry.next_attempt_at = 500;
    s.settle("w", vec![retry]).await.unwrap();
    assert!(s.claim(ordered("crm", 10, "w", 100, 1_000)).await.unwrap().is_empty());
    // Unordered claiming ignores keys.
    assert_eq!(s.claim(claim("crm", 10, "x", 100, 1_000)).await.unwrap().len(), 1);
}

pub(super) async fn ordered_head_that_dies_unblocks_its_key(s: &dyn Store) {
    s.ingest(vec![keyed("A"), keyed("A")], 0).await.unwrap();
    let head = s.claim(ordered("crm", 10, "w", 0, 1_000)).await.unwrap();
    assert_eq!(head.len(), 1);
    let dead = settlement(&head[0], DeliveryStatus::Dead, AttemptOutcome::Permanent, 1);
    s.settle("w", vec![dead]).await.unwrap();
    let next = s.claim(ordered("crm", 10, "w", 2, 1_000)).await.unwrap();
    assert_eq!(next.len(), 1);
    assert_ne!(next[0].delivery_id, head[0].delivery_id);
}

pub(super) async fn ordered_head_that_retries_then_dies_unblocks_its_key(s: &dyn Store) {
    s.ingest(vec![keyed("A"), keyed("A"), keyed("B")], 0).await.unwrap();
    let first = s.claim(ordered("crm", 10, "w", 0, 1_000)).await.unwrap();
    assert_eq!(first.len(), 2);
    let mut retry = settlement(&first[0], DeliveryStatus::Pending, AttemptOutcome::Retry, 1);
    retry.next_attempt_at = 500;
    s.settle("w", vec![retry]).await.unwrap();
    assert!(s.claim(ordered("crm", 10, "w", 100, 1_000)).await.unwrap().is_empty());
    let head = s.claim(ordered("crm", 10, "w", 600, 2_000)).await.unwrap();
    assert_eq!(head.len(), 1);
    assert_eq!(head[0].delivery_id, first[0].delivery_id);
    let dead = settlement(&head[0], DeliveryStatus::Dead, AttemptOutcome::Permanent, 601);
    s.settle("w", vec![dead]).await.unwrap();
    let next = s.claim(ordered("crm", 10, "w", 602, 2_000)).await.unwrap();
    assert_eq!(next.len(), 1, "a dead head unblocks its key");
    assert_ne!(next[0].delivery_id, head[0].delivery_id);
}

pub(super) async fn settle_emits_events_only_when_the_lease_holds(s: &dyn Store) {
    s.ingest(vec![event(None, &["crm"])], 0).await.unwrap();
    let c = s.claim(claim("crm", 1, "w", 0, 100)).await.unwrap();
    let op = |key: &str| NewEvent {
        event_type: EventType::try_from("outboxd.delivery.dead".to_string()).unwrap(),
        idempotency_key: Some(ProducerKey::try_from(key.to_string()).unwrap()),
        ..event(None, &["alerts"])
    };
    let mut lost = settlement(&c[0], DeliveryStatus::Dead, AttemptOutcome::Permanent, 1);
    lost.emit = vec![op("k-lost")];
    let report = s.settle("someone-else", vec![lost]).await.unwrap();
    assert_eq!(report.lost_leases.len(), 1);
    assert!(
        !s.status_counts().await.unwrap().contains_key("alerts"),
        "no event from a lost lease"
    );

    let mut held = settlement(&c[0], DeliveryStatus::Dead, AttemptOutcome::Permanent, 1);
    held.emit = vec![op("k-held")];
    s.settle("w", vec![held]).await.unwrap();
    assert_eq!(s.status_counts().await.unwrap()["alerts"][&DeliveryStatus::Pending], 1);
}

pub(super) async fn lost_leases_are_reported_in_id_order(s: &dyn Store) {
    s.ingest((0..4).map(|_| event(None, &["crm"])).collect(), 0)
        .await
        .unwrap();
    let c = s.claim(claim("crm", 10, "w", 0, 100)).await.unwrap();
    let batch = [3, 0, 2, 1]
        .iter()
        .map(|&i| settlement(&c[i], DeliveryStatus::Delivered, AttemptOutcome::Delivered, 5))
        .collect();
    let report = s.settle("intruder", batch).await.unwrap();
    let ids: Vec<i64> = c.iter().map(|c| c.delivery_id).collect();
    assert_eq!(report.lost_leases, ids);
    assert_eq!(s.status_counts().await.unwrap()["crm"][&DeliveryStatus::InFlight], 4);
}

pub(super) async fn unclaimed_deliveries_are_pending_again_as_if_never_claimed(db: &dyn Backend) {
    let (a, b) = (db.open().await, db.open().await);
    a.ingest((0..3).map(|_| event(None, &["crm"])).collect(), 0)
        .await
        .unwrap();
    let claimed = a.claim(claim("crm", 10, "a", 100, 10_000)).await.unwrap();
    assert_eq!(claimed.len(), 3);
    let back: Vec<(i64, u32)> = claimed[1..].iter().map(|c| (c.delivery_id, c.seq)).collect();
    // Someone else's lease, or a stale seq, is left alone.
    assert_eq!(
        b.unclaim("b", back.clone(), None).await.unwrap(),
        0,
        "only the holder gives back"
    );
    assert_eq!(
        a.unclaim("a", vec![(claimed[1].delivery_id, 7)], None).await.unwrap(),
        0
    );
    assert_eq!(a.unclaim("a", Vec::new(), None).await.unwrap(), 0);
    assert_eq!(a.unclaim("a", back, None).await.unwrap(), 2);
    for (i, c) in claimed.iter().enumerate() {
        let d = &b.event(c.event.id).await.unwrap().unwrap().deliveries[0];
        if i == 0 {
            assert_eq!(
                (d.status, d.attempts, d.history.len()),
                (DeliveryStatus::InFlight, 1, 1)
            );
        } else {
            assert_eq!((d.status, d.attempts, d.history.len()), (DeliveryStatus::Pending, 0, 0));
        }
    }
    // Long before a's lease would expire, b takes them, as first attempts with history row 1.
    let taken = b.claim(claim("crm", 10, "b", 200, 10_000)).await.unwrap();
    assert_eq!(taken.len(), 2);
    assert!(taken.iter().all(|c| c.attempt == 1 && c.seq == 1));
    let d = &a.event(taken[0].event.id).await.unwrap().unwrap().deliveries[0];
    assert_eq!(
        (d.status, d.attempts, d.history.len()),
        (DeliveryStatus::InFlight, 1, 1)
    );
    assert_eq!(
        (d.history[0].started_at, d.history[0].outcome),
        (200, AttemptOutcome::Running)
    );
}

pub(super) async fn heartbeat_keeps_leases_and_sweeper_returns_expired_ones(db: &dyn Backend) {
    let (a, b) = (db.open().await, db.open().await);
    a.ingest(vec![event(None, &["crm"]), event(None, &["billing"])], 0)
        .await
        .unwrap();
    a.claim(claim("crm", 1, "alive", 0, 100)).await.unwrap();
    a.claim(claim("billing", 1, "gone", 0, 100)).await.unwrap();
    assert_eq!(a.extend_leases("alive", 0, 1_000).await.unwrap(), 1);
    assert_eq!(a.extend_leases("alive", 0, 50).await.unwrap(), 1, "never shortened");
    assert_eq!(
        b.sweep_expired(500).await.unwrap(),
        1,
        "only the dead worker's lease expired"
    );
    assert_eq!(b.next_due(&t("billing")).await.unwrap(), Some(500), "swept: due now");
    assert_eq!(b.next_due(&t("crm")).await.unwrap(), None, "still in flight");
    assert_eq!(b.sweep_expired(999).await.unwrap(), 0, "the heartbeat kept it");
    assert_eq!(b.sweep_expired(1_000).await.unwrap(), 1);
}

/// A lease that has expired belongs to the sweeper (or a claim's take-over): its owner's
/// heartbeat does not revive it, even before anyone has swept it, while the owner's live
/// leases are kept.
pub(super) async fn heartbeat_does_not_extend_an_expired_lease(db: &dyn Backend) {
    let (a, b) = (db.open().await, db.open().await);
    a.ingest(vec![event(None, &["crm"]), event(None, &["billing"])], 0)
        .await
        .unwrap();
    let late = a.claim(claim("crm", 1, "slow", 0, 100)).await.unwrap();
    let live = a.claim(claim("billing", 1, "slow", 150, 400)).await.unwrap();
    assert_eq!((late.len(), live.len()), (1, 1));
    // At 100 the first lease is over; the heartbeat at 200 extends only the live one.
    assert_eq!(
        a.extend_leases("slow", 200, 1_000).await.unwrap(),
        1,
        "only the live lease"
    );
    assert_eq!(
        a.extend_leases("slow", 100, 1_000).await.unwrap(),
        1,
        "expired at exactly its end"
    );
    assert_eq!(
        b.sweep_expired(200).await.unwrap(),
        1,
        "the expired lease is still expired"
    );
    assert_eq!(b.next_due(&t("crm")).await.unwrap(), Some(200), "swept: due now");
    assert_eq!(
        b.sweep_expired(1_100).await.unwrap(),
        0,
        "the live one was extended to 1 200"
    );
    assert_eq!(b.sweep_expired(1_200).await.unwrap(), 1);
    // Its late outcome is a lost lease; the history keeps both attempts' ends.
    let outcome = settlement(&late[0], DeliveryStatus::Delivered, AttemptOutcome::Delivered, 1_300);
    let report = a.settle("slow", vec![outcome]).await.unwrap();
    assert_eq!(report.lost_leases, vec![late[0].delivery_id]);
    let d = &b.event(late[0].event.id).await.unwrap().unwrap().deliveries[0];
    assert_eq!(d.status, DeliveryStatus::Pending, "the sweeper's, not revived");
}

/// A retry its budget held back: given back uncounted, and not due before the time given
/// (a time earlier than its due time changes nothing).
pub(super) async fn a_delivery_given_back_to_wait_is_not_due_before_its_time(s: &dyn Store) {
    s.ingest(vec![event(None, &["crm"])], 1_000).await.unwrap();
    let claimed = s.claim(claim("crm", 10, "a", 1_000, 60_000)).await.unwrap();
    let back = vec![(claimed[0].delivery_id, claimed[0].seq)];
    assert_eq!(s.unclaim("a", back, Some(5_000)).await.unwrap(), 1);
    assert_eq!(s.next_due(&t("crm")).await.unwrap(), Some(5_000));
    assert!(s.claim(claim("crm", 10, "a", 4_999, 60_000)).await.unwrap().is_empty());
    let again = s.claim(claim("crm", 10, "a", 5_000, 60_000)).await.unwrap();
    assert_eq!(again.len(), 1);
    assert_eq!(
        (again[0].attempt, again[0].seq),
        (1, 1),
        "the held-back attempt was not counted"
    );
    let back = vec![(again[0].delivery_id, again[0].seq)];
    assert_eq!(s.unclaim("a", back, Some(10)).await.unwrap(), 1);
    assert_eq!(
        s.next_due(&t("crm")).await.unwrap(),
        Some(5_000),
        "an earlier time changes nothing"
    );
}

pub(super) async fn a_delivery_is_due_at_the_time_given_and_keeps_its_keys_order(s: &dyn Store) {
    let due = |due_at: Option<i64>, target: &str, key: Option<&str>| NewEvent {
        due_at,
        traceparent: None,
        ordering_key: key.map(Into::into),
        ..event(None, &[target])
    };
    let events = s
        .ingest(
            vec![
                // Scheduled.
                due(Some(1_000), "crm", None),
                // At acceptance.
                due(None, "crm", None),
                // Before acceptance: a priority's head start, claimed first.
                due(Some(5), "crm", None),
            ],
            10,
        )
        .await
        .unwrap();
    let detail = s.event(events[0].id).await.unwrap().unwrap();
    assert_eq!(detail.deliveries[0].next_attempt_at, Some(1_000));
    assert_eq!(detail.deliveries[0].status, DeliveryStatus::Pending);
    let ahead = s.event(events[2].id).await.unwrap().unwrap();
    assert_eq!(ahead.deliveries[0].next_attempt_at, Some(5));
    assert_eq!(s.next_due(&t("crm")).await.unwrap(), Some(5));
    let first = s.claim(claim("crm", 1, "h", 20, 60_000)).await.unwrap();
    assert_eq!(first[0].event.id, events[2].id, "the head start goes first");
    let second = s.claim(claim("crm", 10, "h", 20, 60_000)).await.unwrap();
    assert_eq!(second.len(), 1, "the scheduled one is not due yet: {second:?}");
    assert_eq!(second[0].event.id, events[1].id);
    assert_eq!(s.next_due(&t("crm")).await.unwrap(), Some(1_000));
    assert!(s.claim(claim("crm", 10, "h", 999, 60_000)).await.unwrap().is_empty());
    let scheduled = s.claim(claim("crm", 10, "h", 1_000, 61_000)).await.unwrap();
    assert_eq!(scheduled.len(), 1);
    assert_eq!(scheduled[0].event.id, events[0].id);

    // Per-key order holds: an unscheduled event waits behind a scheduled one of its key, and
    // a head start does not pass an earlier event of its key.
    let keyed = s
        .ingest(
            vec![
                due(Some(1_000), "erp", Some("k")),
                due(None, "erp", Some("k")),
                due(Some(1), "erp", Some("k")),
            ],
            10,
        )
        .await
        .unwrap();
    assert!(s.claim(ordered("erp", 10, "h", 20, 60_000)).await.unwrap().is_empty());
    let head = s.claim(ordered("erp", 10, "h", 1_000, 61_000)).await.unwrap();
    assert_eq!(head.len(), 1);
    assert_eq!(head[0].event.id, keyed[0].id);
}
