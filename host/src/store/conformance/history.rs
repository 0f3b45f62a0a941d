//! Scenarios of the attempt history: one row per attempt, written when it ends; the running
//! attempt shown from the in-flight delivery; abandonment and its reasons; rows left by an
//! older version.

use super::{Backend, claim, event, settlement, t};
use crate::domain::{AttemptOutcome, DeliveryStatus, ReceiverResponse};
use crate::store::history::Abandonment;
use crate::store::{AttemptRecord, FailedFilter, Store};

pub(super) async fn a_running_attempt_is_the_in_flight_delivery_until_it_settles(s: &dyn Store) {
    let id = s.ingest(vec![event(None, &["crm"])], 0).await.unwrap()[0].id;
    let c = s.claim(claim("crm", 1, "w", 40, 1_000)).await.unwrap();
    let d = &s.event(id).await.unwrap().unwrap().deliveries[0];
    assert_eq!(
        (d.status, d.attempts, d.next_attempt_at),
        (DeliveryStatus::InFlight, 1, None)
    );
    assert_eq!(d.history, [AttemptRecord::running(1, 40)]);
    let mut retry = settlement(&c[0], DeliveryStatus::Pending, AttemptOutcome::Retry, 60);
    retry.last_error = Some("HTTP 503".into());
    retry.next_attempt_at = 100;
    retry.response = Some(ReceiverResponse::new(503, b"busy"));
    retry.detail = Some("charge refused".into());
    s.settle("w", vec![retry]).await.unwrap();
    let d = &s.event(id).await.unwrap().unwrap().deliveries[0];
    let settled = AttemptRecord {
        n: 1,
        started_at: 57,
        duration_ms: Some(3),
        outcome: AttemptOutcome::Retry,
        error: Some("HTTP 503".into()),
        plugin_hash: Some("abc".into()),
        response: Some(ReceiverResponse::new(503, b"busy")),
        detail: Some("charge refused".into()),
    };
    assert_eq!(d.history, std::slice::from_ref(&settled));
    let c = s.claim(claim("crm", 1, "w", 100, 1_000)).await.unwrap();
    assert_eq!((c[0].attempt, c[0].seq), (2, 2));
    s.settle(
        "w",
        vec![settlement(
            &c[0],
            DeliveryStatus::Delivered,
            AttemptOutcome::Delivered,
            110,
        )],
    )
    .await
    .unwrap();
    let d = &s.event(id).await.unwrap().unwrap().deliveries[0];
    assert_eq!(d.history.len(), 2);
    assert_eq!(d.history[0], settled);
    assert_eq!((d.history[1].n, d.history[1].started_at), (2, 107));
    assert_eq!(s.version_attempts().await.unwrap()["crm"]["abc"], 2);
}

/// The outcomes and errors of a delivery's history.
async fn history_of(s: &dyn Store, id: crate::domain::EventId) -> Vec<(AttemptOutcome, Option<String>)> {
    let d = &s.event(id).await.unwrap().unwrap().deliveries[0];
    d.history.iter().map(|h| (h.outcome, h.error.clone())).collect()
}

fn abandoned(why: Abandonment) -> (AttemptOutcome, Option<String>) {
    (AttemptOutcome::Abandoned, Some(why.as_str().to_owned()))
}

pub(super) async fn every_abandonment_records_its_reason(s: &dyn Store) {
    let ids: Vec<_> = s
        .ingest(
            vec![
                event(None, &["taken"]),
                event(None, &["swept"]),
                event(None, &["released"]),
                event(None, &["recovered"]),
            ],
            0,
        )
        .await
        .unwrap()
        .into_iter()
        .map(|i| i.id)
        .collect();
    for target in ["taken", "swept", "released", "recovered"] {
        assert_eq!(s.claim(claim(target, 1, target, 10, 100)).await.unwrap().len(), 1);
    }
    // A claim takes over an expired lease of its target.
    let taken = s.claim(claim("taken", 1, "other", 200, 300)).await.unwrap();
    assert_eq!(taken[0].seq, 2);
    assert_eq!(s.release("released", 150).await.unwrap(), 1);
    assert_eq!(
        s.recover_orphans(160).await.unwrap(),
        3,
        "recovered, swept and taken (again in flight)"
    );
    assert_eq!(s.sweep_expired(170).await.unwrap(), 0, "nothing left in flight");
    let swept = s.claim(claim("swept", 1, "w", 180, 190)).await.unwrap();
    assert_eq!(s.sweep_expired(190).await.unwrap(), 1);
    assert_eq!(swept[0].seq, 2);

    assert_eq!(
        history_of(s, ids[0]).await,
        [
            abandoned(Abandonment::LeaseExpiredAtClaim),
            abandoned(Abandonment::Recovered)
        ]
    );
    assert_eq!(
        history_of(s, ids[1]).await,
        [abandoned(Abandonment::Recovered), abandoned(Abandonment::Swept)]
    );
    assert_eq!(history_of(s, ids[2]).await, [abandoned(Abandonment::Released)]);
    assert_eq!(history_of(s, ids[3]).await, [abandoned(Abandonment::Recovered)]);
    // The abandoned attempts counted: the next claim is the third attempt.
    let third = s.claim(claim("taken", 1, "w", 400, 500)).await.unwrap();
    assert_eq!((third[0].attempt, third[0].seq), (3, 3));
}

pub(super) async fn a_late_outcome_replaces_the_abandoned_row(s: &dyn Store) {
    let id = s.ingest(vec![event(None, &["crm"])], 0).await.unwrap()[0].id;
    let c = s.claim(claim("crm", 1, "slow", 10, 100)).await.unwrap();
    assert_eq!(s.sweep_expired(100).await.unwrap(), 1);
    assert_eq!(history_of(s, id).await, [abandoned(Abandonment::Swept)]);
    // The slow worker reports back after all: its lease is lost, but the history keeps what the
    // attempt did, in place of the abandonment.
    let mut late = settlement(&c[0], DeliveryStatus::Dead, AttemptOutcome::Permanent, 120);
    late.last_error = Some("HTTP 400".into());
    let report = s.settle("slow", vec![late]).await.unwrap();
    assert_eq!(report.lost_leases, [c[0].delivery_id]);
    assert_eq!(
        history_of(s, id).await,
        [(AttemptOutcome::Permanent, Some("HTTP 400".into()))]
    );
    let d = &s.event(id).await.unwrap().unwrap().deliveries[0];
    assert_eq!((d.status, d.history[0].started_at), (DeliveryStatus::Pending, 10));
    assert_eq!(s.version_attempts().await.unwrap()["crm"]["abc"], 1, "it ran");
}

pub(super) async fn a_running_row_of_an_older_version_is_abandoned_or_replaced(db: &dyn Backend) {
    let s = db.open().await;
    let ids: Vec<_> = s
        .ingest(vec![event(None, &["crm"]), event(None, &["crm"])], 0)
        .await
        .unwrap()
        .into_iter()
        .map(|i| i.id)
        .collect();
    let c = s.claim(claim("crm", 2, "w", 10, 100)).await.unwrap();
    for claimed in &c {
        db.plant_running_row(claimed.delivery_id, claimed.seq, 10).await;
    }
    // While in flight, the row is the running attempt: shown once.
    let d = &s.event(ids[0]).await.unwrap().unwrap().deliveries[0];
    assert_eq!(d.history.len(), 1);
    assert_eq!(
        (d.history[0].outcome, d.history[0].started_at),
        (AttemptOutcome::Running, 10)
    );
    // A settle replaces it with what the attempt did...
    let first = c.iter().find(|c| c.event.id == ids[0]).unwrap();
    s.settle(
        "w",
        vec![settlement(
            first,
            DeliveryStatus::Delivered,
            AttemptOutcome::Delivered,
            50,
        )],
    )
    .await
    .unwrap();
    let d = &s.event(ids[0]).await.unwrap().unwrap().deliveries[0];
    assert_eq!(d.history.len(), 1);
    assert_eq!(
        (
            d.history[0].outcome,
            d.history[0].duration_ms,
            d.history[0].plugin_hash.as_deref()
        ),
        (AttemptOutcome::Delivered, Some(3), Some("abc"))
    );
    // ...and an abandonment turns it into abandoned.
    assert_eq!(s.sweep_expired(100).await.unwrap(), 1);
    assert_eq!(history_of(s.as_ref(), ids[1]).await, [abandoned(Abandonment::Swept)]);
    assert_eq!(s.next_due(&t("crm")).await.unwrap(), Some(100));
}

/// Each attempt keeps what the receiver answered (status and text, as they were settled); the
/// dead-letter listing shows the last attempt's, and an attempt nobody answered keeps none.
pub(super) async fn each_attempt_keeps_the_receivers_response(s: &dyn Store) {
    let id = s.ingest(vec![event(None, &["crm"])], 0).await.unwrap()[0].id;
    let c = s.claim(claim("crm", 1, "w", 10, 1_000)).await.unwrap();
    let mut first = settlement(&c[0], DeliveryStatus::Pending, AttemptOutcome::Retry, 20);
    first.response = Some(ReceiverResponse::new(500, br#"{"error":"upstream exploded"}"#));
    first.last_error = Some("HTTP 500".into());
    s.settle("w", vec![first]).await.unwrap();
    let c = s.claim(claim("crm", 1, "w", 30, 1_000)).await.unwrap();
    let mut timeout = settlement(&c[0], DeliveryStatus::Pending, AttemptOutcome::Retry, 40);
    timeout.last_error = Some("timeout".into());
    s.settle("w", vec![timeout]).await.unwrap();
    let c = s.claim(claim("crm", 1, "w", 50, 1_000)).await.unwrap();
    let mut last = settlement(&c[0], DeliveryStatus::Dead, AttemptOutcome::Permanent, 60);
    let long = format!("{{\"error\":\"{}\"}}", "é".repeat(1_000));
    last.response = Some(ReceiverResponse::new(422, long.as_bytes()));
    s.settle("w", vec![last]).await.unwrap();

    let d = &s.event(id).await.unwrap().unwrap().deliveries[0];
    let responses: Vec<_> = d.history.iter().map(|h| h.response.clone()).collect();
    assert_eq!(
        responses,
        [
            Some(ReceiverResponse::new(500, br#"{"error":"upstream exploded"}"#)),
            None,
            Some(ReceiverResponse::new(422, long.as_bytes())),
        ]
    );
    let kept = responses[2].as_ref().unwrap();
    assert!(kept.body.ends_with("… [cut from 2012 bytes]"), "{}", kept.body);
    let failed = s.list_failed(FailedFilter::default(), 0, 10).await.unwrap();
    assert_eq!(failed.len(), 1);
    assert_eq!(failed[0].last_response, responses[2], "the last attempt's");
}
