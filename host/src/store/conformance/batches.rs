//! Scenarios of work done in sets: a settle batch whose leases are partly held and partly lost
//! (each row checked on its own), and the idempotency ledger under concurrent requests that
//! share keys, inside one request and across requests written together or side by side.

use std::collections::{BTreeMap, BTreeSet};

use super::{Backend, claim, event, settlement};
use crate::domain::{AttemptOutcome, DeliveryStatus, EventType, ProducerKey};
use crate::store::NewEvent;

/// An operational event for `alerts` with producer key `key`.
fn alert(key: &str) -> NewEvent {
    NewEvent {
        event_type: EventType::try_from("outboxd.delivery.dead".to_string()).unwrap(),
        idempotency_key: Some(ProducerKey::try_from(key.to_string()).unwrap()),
        ..event(None, &["alerts"])
    }
}

pub(super) async fn a_batched_settle_changes_only_the_leases_still_held(db: &dyn Backend) {
    let (a, b) = (db.open().await, db.open().await);
    a.ingest((0..6).map(|_| event(None, &["crm"])).collect(), 0)
        .await
        .unwrap();
    let mut mine = a.claim(claim("crm", 3, "a", 0, 100)).await.unwrap();
    mine.extend(a.claim(claim("crm", 3, "a", 0, 10_000)).await.unwrap());
    assert_eq!(mine.len(), 6);
    // a's first three leases expire; b takes them over (their attempt 1 abandoned).
    let taken = b.claim(claim("crm", 10, "b", 200, 10_000)).await.unwrap();
    let taken_ids: Vec<i64> = taken.iter().map(|c| c.delivery_id).collect();
    assert_eq!(taken_ids, mine[..3].iter().map(|c| c.delivery_id).collect::<Vec<_>>());
    assert!(taken.iter().all(|c| c.seq == 2));

    // One batch from a, in no particular order: the three it lost and the three it still
    // holds, one of them for a stale attempt, each emitting an alert.
    let mut batch = Vec::new();
    for (i, c) in mine.iter().enumerate().rev() {
        let mut s = settlement(c, DeliveryStatus::Dead, AttemptOutcome::Permanent, 300);
        if i == 5 {
            s.seq = 7;
        }
        s.emit = vec![alert(&format!("alert-{i}"))];
        batch.push(s);
    }
    let report = a.settle("a", batch).await.unwrap();
    let mut lost: Vec<i64> = taken_ids.clone();
    lost.push(mine[5].delivery_id);
    assert_eq!(report.lost_leases, lost, "the leases a no longer held, in id order");

    for (i, c) in mine.iter().enumerate() {
        let d = &b.event(c.event.id).await.unwrap().unwrap().deliveries[0];
        match i {
            0..=2 => {
                assert_eq!(
                    (d.status, d.attempts),
                    (DeliveryStatus::InFlight, 2),
                    "b's lease is untouched"
                );
                assert_eq!(d.history[0].outcome, AttemptOutcome::Permanent, "what a's attempt did");
            }
            3 | 4 => assert_eq!(d.status, DeliveryStatus::Dead),
            _ => assert_eq!(d.status, DeliveryStatus::InFlight, "a stale attempt changes nothing"),
        }
    }
    let counts = b.status_counts().await.unwrap();
    assert_eq!(
        counts["alerts"][&DeliveryStatus::Pending],
        2,
        "alerts only of the outcomes whose lease held"
    );
    // b still settles what it took.
    let batch = taken
        .iter()
        .map(|c| settlement(c, DeliveryStatus::Delivered, AttemptOutcome::Delivered, 400))
        .collect();
    assert!(b.settle("b", batch).await.unwrap().lost_leases.is_empty());
    assert_eq!(b.status_counts().await.unwrap()["crm"][&DeliveryStatus::Delivered], 3);
}

pub(super) async fn concurrent_ingests_of_shared_keys_make_one_event_per_key(db: &dyn Backend) {
    let hosts = [db.open().await, db.open().await];
    let mut requests = Vec::new();
    for r in 0..24usize {
        let store = std::sync::Arc::clone(&hosts[r % 2]);
        // Every request carries the shared keys, in an order of its own, one of them twice,
        // and a key of its own.
        let mut keys = vec!["k-a".to_string(), "k-b".to_string(), "k-c".to_string()];
        keys.rotate_left(r % 3);
        if r % 2 == 1 {
            keys.reverse();
        }
        keys.push(keys[0].clone());
        keys.push(format!("own-{r}"));
        let events: Vec<NewEvent> = keys.iter().map(|k| event(Some(k), &["crm"])).collect();
        requests.push(tokio::spawn(async move {
            let answers = store.ingest(events, r as i64).await.unwrap();
            keys.into_iter().zip(answers).collect::<Vec<_>>()
        }));
    }
    let mut ids: BTreeMap<String, BTreeSet<_>> = BTreeMap::new();
    let mut new: BTreeMap<String, usize> = BTreeMap::new();
    for r in requests {
        for (key, answer) in r.await.unwrap() {
            ids.entry(key.clone()).or_default().insert(answer.id);
            *new.entry(key).or_default() += usize::from(!answer.duplicate);
        }
    }
    assert_eq!(ids.len(), 3 + 24);
    for (key, set) in &ids {
        assert_eq!(set.len(), 1, "every answer for {key} names one event");
        assert_eq!(new[key], 1, "exactly one request stored {key}");
    }
    let counts = hosts[0].status_counts().await.unwrap();
    assert_eq!(
        counts["crm"][&DeliveryStatus::Pending],
        3 + 24,
        "one event, one delivery per key"
    );
    for (key, set) in ids {
        let id = set.into_iter().next().unwrap();
        let detail = hosts[1].event(id).await.unwrap().unwrap();
        assert_eq!(detail.event.idempotency_key.as_deref(), Some(key.as_str()));
    }
}
