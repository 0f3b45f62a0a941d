//! Scenarios of payload erasure: only once every delivery is final (else which are not), by
//! event id or producer key, keeping the event, its history and its key; idempotent; never
//! replayed afterwards; and retention's erasure of old finished events.

use super::admin::finish;
use super::{claim, event, t};
use crate::domain::{DeliveryStatus, EventId, Millis, ProducerKey};
use crate::store::{ERASED_PAYLOAD, Erasure, EventRef, FailedFilter, Store};

pub(super) async fn erasure_waits_for_final_deliveries_and_keeps_the_event(s: &dyn Store) {
    let id = s
        .ingest(vec![event(Some("order-9"), &["crm", "billing", "audit"])], 0)
        .await
        .unwrap()[0]
        .id;
    finish(s, "crm", DeliveryStatus::Delivered, 10, None).await;
    finish(s, "audit", DeliveryStatus::Dead, 10, Some("HTTP 400")).await;
    let running = s.claim(claim("billing", 10, "w", 10, 60_000)).await.unwrap();
    assert_eq!(running.len(), 1);

    // billing is in flight: refused, nothing changed.
    assert_eq!(
        s.erase_payload(EventRef::Id(id), 20).await.unwrap(),
        Some((id, Erasure::NotFinal(vec![(t("billing"), DeliveryStatus::InFlight)])))
    );
    let detail = s.event(id).await.unwrap().unwrap();
    assert_eq!((detail.erased_at, detail.event.payload.as_str()), (None, r#"{"n":1}"#));

    s.settle(
        "w",
        vec![super::settlement(
            &running[0],
            DeliveryStatus::Delivered,
            crate::domain::AttemptOutcome::Delivered,
            30,
        )],
    )
    .await
    .unwrap();
    let key = EventRef::ProducerKey(ProducerKey::try_from("order-9".to_string()).unwrap());
    assert_eq!(
        s.erase_payload(key.clone(), 40).await.unwrap(),
        Some((id, Erasure::Erased { at: 40 }))
    );
    let detail = s.event(id).await.unwrap().unwrap();
    assert_eq!(detail.erased_at, Some(40));
    assert_eq!(detail.event.payload, ERASED_PAYLOAD);
    assert!(detail.event.headers.is_empty());
    assert_eq!(detail.event.idempotency_key.as_deref(), Some("order-9"));
    assert_eq!(detail.deliveries.len(), 3, "the deliveries and their history stay");
    assert!(detail.deliveries.iter().all(|d| !d.history.is_empty()));
    assert_eq!(
        s.erase_payload(key, 50).await.unwrap(),
        Some((id, Erasure::AlreadyErased { at: 40 })),
        "idempotent"
    );
    // The key still names the event: a producer retry is a duplicate.
    let again = s.ingest(vec![event(Some("order-9"), &["crm"])], 60).await.unwrap();
    assert_eq!((again[0].duplicate, again[0].id), (true, id));

    // Its dead delivery is still listed, but a replay leaves it: there is nothing to deliver.
    let audit = FailedFilter {
        target: Some(t("audit")),
        ..FailedFilter::default()
    };
    assert_eq!(s.count_failed(audit.clone()).await.unwrap(), 1);
    assert_eq!(s.replay(audit, 10, 70).await.unwrap(), 0);
    assert!(s.claim(claim("audit", 10, "w", 80, 60_000)).await.unwrap().is_empty());

    assert_eq!(s.erase_payload(EventRef::Id(EventId::new()), 90).await.unwrap(), None);
    let unknown = EventRef::ProducerKey(ProducerKey::try_from("nope".to_string()).unwrap());
    assert_eq!(s.erase_payload(unknown, 90).await.unwrap(), None);
}

pub(super) async fn retention_erases_payloads_of_old_finished_events_only(s: &dyn Store) {
    const DAY: Millis = 24 * 3_600_000;
    let t0: Millis = 1_000 * DAY;
    let old = s
        .ingest(vec![event(None, &["ok"]), event(None, &["bad"]), event(None, &[])], t0)
        .await
        .unwrap();
    finish(s, "ok", DeliveryStatus::Delivered, t0, None).await;
    finish(s, "bad", DeliveryStatus::Dead, t0, Some("HTTP 400")).await;
    let young = s.ingest(vec![event(None, &["ok"])], t0 + 2 * DAY).await.unwrap();
    finish(s, "ok", DeliveryStatus::Delivered, t0 + 2 * DAY, None).await;
    let cutoff = t0 + DAY;
    assert_eq!(
        s.erase_finished_payloads(cutoff, 1, cutoff).await.unwrap(),
        1,
        "in batches"
    );
    assert_eq!(s.erase_finished_payloads(cutoff, 10, cutoff).await.unwrap(), 1);
    assert_eq!(
        s.erase_finished_payloads(cutoff, 10, cutoff + 1).await.unwrap(),
        0,
        "once"
    );
    let erased = |id| async move { s.event(id).await.unwrap().unwrap().erased_at };
    assert_eq!(erased(old[0].id).await, Some(cutoff), "delivered: erased");
    assert_eq!(erased(old[2].id).await, Some(cutoff), "no deliveries: erased");
    assert_eq!(erased(old[1].id).await, None, "dead: kept");
    assert_eq!(erased(young[0].id).await, None, "young: kept");
    // Retention deletes erased events as any other.
    assert_eq!(s.prune_finished(cutoff, 10).await.unwrap(), 2);
}
