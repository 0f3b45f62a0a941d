//! Scenarios of what the dashboard reads: the event search (each filter narrows: type glob,
//! producer key, a delivery's status and target, together on the same delivery, creation
//! time; newest first, paged by `before` without gaps or repeats, each event with its
//! deliveries' statuses) and the backlog counts its chart samples.

use super::admin::finish;
use super::{event, t};
use crate::domain::{DeliveryStatus, EventId, EventType};
use crate::store::{EventFilter, Store};

fn ids(found: &[crate::store::EventSummary]) -> Vec<EventId> {
    found.iter().map(|e| e.id).collect()
}

pub(super) async fn search_narrows_by_each_filter_newest_first_and_pages_by_id(s: &dyn Store) {
    // a: crm + billing at 100; b: crm at 200 (type invoice.sent); c: billing at 300, keyed.
    let a = s
        .ingest(vec![event(Some("order-1"), &["crm", "billing"])], 100)
        .await
        .unwrap()[0]
        .id;
    let mut invoice = event(None, &["crm"]);
    invoice.event_type = EventType::try_from("invoice.sent".to_string()).unwrap();
    let b = s.ingest(vec![invoice], 200).await.unwrap()[0].id;
    let c = s
        .ingest(vec![event(Some("order-[3]"), &["billing"])], 300)
        .await
        .unwrap()[0]
        .id;
    // crm's two deliveries are delivered; billing's (a's and c's) die.
    finish(s, "crm", DeliveryStatus::Delivered, 400, None).await;
    finish(s, "billing", DeliveryStatus::Dead, 400, Some("HTTP 422")).await;

    let search = |f: EventFilter, limit| async move { s.search_events(f, limit).await.unwrap() };
    let all = search(EventFilter::default(), 10).await;
    assert_eq!(ids(&all), [c, b, a], "newest first");
    assert_eq!(
        all[2].deliveries,
        [
            (t("billing"), DeliveryStatus::Dead),
            (t("crm"), DeliveryStatus::Delivered)
        ],
        "each delivery's status, by target"
    );
    assert_eq!(all[0].idempotency_key.as_deref(), Some("order-[3]"));
    assert_eq!((all[1].event_type.as_str(), all[1].created_at), ("invoice.sent", 200));

    let by = |f: EventFilter| search(f, 10);
    let glob = |g: &str| EventFilter {
        event_type: Some(g.into()),
        ..EventFilter::default()
    };
    assert_eq!(ids(&by(glob("order.*")).await), [c, a]);
    assert_eq!(ids(&by(glob("invoice.?ent")).await), [b]);
    assert_eq!(ids(&by(glob("order")).await), [], "a glob matches the whole type");
    let key = |k: &str| EventFilter {
        key: Some(k.into()),
        ..EventFilter::default()
    };
    assert_eq!(ids(&by(key("order-1")).await), [a]);
    // Glob characters in a key are the key's own.
    assert_eq!(ids(&by(key("order-[3]")).await), [c]);
    assert_eq!(ids(&by(key("order-%")).await), []);
    assert_eq!(ids(&by(key("ORDER-1")).await), [], "keys are exact");

    let status = |st: DeliveryStatus, target: Option<&str>| EventFilter {
        status: Some(st),
        target: target.map(t),
        ..EventFilter::default()
    };
    assert_eq!(ids(&by(status(DeliveryStatus::Dead, None)).await), [c, a]);
    assert_eq!(ids(&by(status(DeliveryStatus::Delivered, None)).await), [b, a]);
    // Status and target hold for the same delivery: a's crm delivery is not dead.
    assert_eq!(ids(&by(status(DeliveryStatus::Dead, Some("crm"))).await), []);
    assert_eq!(ids(&by(status(DeliveryStatus::Delivered, Some("crm"))).await), [b, a]);
    assert_eq!(ids(&by(status(DeliveryStatus::Pending, None)).await), []);
    let target = EventFilter {
        target: Some(t("billing")),
        ..EventFilter::default()
    };
    assert_eq!(ids(&by(target).await), [c, a]);

    let window = EventFilter {
        since: Some(200),
        until: Some(300),
        ..EventFilter::default()
    };
    assert_eq!(ids(&by(window).await), [b], "since is inclusive, until exclusive");

    // Paging: two at a time, each page continuing before the last one seen.
    let first = search(EventFilter::default(), 2).await;
    assert_eq!(ids(&first), [c, b]);
    let next = EventFilter {
        before: Some(first[1].id),
        ..EventFilter::default()
    };
    assert_eq!(ids(&search(next, 2).await), [a]);
    let filtered_next = EventFilter {
        before: Some(c),
        ..glob("order.*")
    };
    assert_eq!(ids(&search(filtered_next, 2).await), [a]);
}

/// The backlog the dashboard charts: pending, in flight and paused, per target; final
/// deliveries are not in it, and a target with none is absent.
pub(super) async fn backlog_counts_what_is_still_to_be_done(s: &dyn Store) {
    for _ in 0..4 {
        s.ingest(vec![event(None, &["crm", "billing", "audit"])], 10)
            .await
            .unwrap();
    }
    // crm: one in flight, three pending. billing: held (paused). audit: all delivered.
    assert_eq!(s.claim(super::claim("crm", 1, "w", 20, 60_000)).await.unwrap().len(), 1);
    assert_eq!(s.hold_target(&t("billing"), "no plugin", 20).await.unwrap(), 4);
    finish(s, "audit", DeliveryStatus::Delivered, 30, None).await;
    let backlog = s.backlog_counts().await.unwrap();
    assert_eq!(
        backlog.into_iter().collect::<Vec<_>>(),
        [("billing".to_string(), 4), ("crm".to_string(), 4)]
    );
}
