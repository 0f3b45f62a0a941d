//! Scenarios of the operator's and the host's bulk operations: manual pause, holding targets
//! that are not loaded, the dead-letter filter, replay, retention and the lag query.

use std::collections::BTreeMap;

use super::{Backend, claim, event, settlement, t};
use crate::domain::{AttemptOutcome, DeliveryStatus, Millis};
use crate::store::{FailedFilter, Store};

/// Claims every due delivery of `target` and settles each as `status` at `at`, with `error`.
pub(super) async fn finish(
    s: &dyn Store,
    target: &str,
    status: DeliveryStatus,
    at: Millis,
    error: Option<&str>,
) -> Vec<i64> {
    let outcome = match status {
        DeliveryStatus::Delivered => AttemptOutcome::Delivered,
        _ => AttemptOutcome::Permanent,
    };
    let claimed = s.claim(claim(target, 1_000, "me", at, at + 60_000)).await.unwrap();
    let batch = claimed
        .iter()
        .map(|c| {
            let mut done = settlement(c, status, outcome, at);
            done.last_error = error.map(str::to_owned);
            done
        })
        .collect();
    assert!(s.settle("me", batch).await.unwrap().lost_leases.is_empty());
    claimed.iter().map(|c| c.delivery_id).collect()
}

pub(super) async fn paused_targets_claim_nothing_until_resumed(db: &dyn Backend) {
    // Paused on one handle (the CLI, or another host), seen by the other.
    let (a, b) = (db.open().await, db.open().await);
    a.ingest(vec![event(None, &["crm", "billing"])], 0).await.unwrap();
    assert!(a.set_target_paused(&t("crm"), true, 0).await.unwrap());
    assert!(
        !b.set_target_paused(&t("crm"), true, 0).await.unwrap(),
        "already paused"
    );
    assert!(
        !b.set_target_paused(&t("billing"), false, 0).await.unwrap(),
        "never paused"
    );
    assert_eq!(b.paused_targets().await.unwrap(), ["crm"]);
    assert!(b.claim(claim("crm", 10, "w", 0, 1_000)).await.unwrap().is_empty());
    assert_eq!(b.claim(claim("billing", 10, "w", 0, 1_000)).await.unwrap().len(), 1);
    assert!(b.set_target_paused(&t("crm"), false, 0).await.unwrap());
    assert!(a.paused_targets().await.unwrap().is_empty());
    assert_eq!(a.claim(claim("crm", 10, "w", 0, 1_000)).await.unwrap().len(), 1);
}

pub(super) async fn held_targets_wait_until_they_are_live_again(s: &dyn Store) {
    let ids = s
        .ingest(vec![event(None, &["crm"]), event(None, &["crm"])], 0)
        .await
        .unwrap();
    assert_eq!(s.hold_target(&t("crm"), "plugin does not load", 10).await.unwrap(), 2);
    assert_eq!(s.hold_target(&t("crm"), "plugin does not load", 11).await.unwrap(), 0);
    assert_eq!(s.hold_target(&t("crm"), "still broken", 12).await.unwrap(), 2);
    let d = &s.event(ids[0].id).await.unwrap().unwrap().deliveries[0];
    assert_eq!(
        (d.status, d.last_error.as_deref()),
        (DeliveryStatus::Paused, Some("still broken"))
    );
    assert_eq!(s.status_counts().await.unwrap()["crm"][&DeliveryStatus::Paused], 2);
    assert!(s.claim(claim("crm", 10, "w", 20, 1_000)).await.unwrap().is_empty());
    assert_eq!(s.next_due(&t("crm")).await.unwrap(), None);
    assert_eq!(
        s.sync_paused(vec![t("crm")]).await.unwrap(),
        (0, 2),
        "live again: resumed"
    );
    assert_eq!(s.sync_paused(Vec::new()).await.unwrap(), (2, 0), "gone: paused");
    assert_eq!(s.sync_paused(vec![t("crm"), t("crm")]).await.unwrap(), (0, 2));
    assert_eq!(s.claim(claim("crm", 10, "w", 20, 1_000)).await.unwrap().len(), 2);
}

pub(super) async fn failed_filters_narrow_listing_count_and_replay(s: &dyn Store) {
    s.ingest(
        vec![
            event(None, &["crm", "billing"]),
            event(None, &["crm"]),
            event(None, &["crm"]),
        ],
        0,
    )
    .await
    .unwrap();
    let crm = s.claim(claim("crm", 10, "me", 10, 1_000)).await.unwrap();
    let bill = s.claim(claim("billing", 10, "me", 10, 1_000)).await.unwrap();
    let done = |i: usize, status, at, error: &str| {
        let c = if i < 3 { &crm[i] } else { &bill[0] };
        let mut s = settlement(c, status, AttemptOutcome::Permanent, at);
        s.last_error = Some(error.into());
        s
    };
    let batch = vec![
        done(0, DeliveryStatus::Dead, 20, "permanent failure: HTTP 400 from crm"),
        done(1, DeliveryStatus::Discarded, 30, "gave up: HTTP 503"),
        done(2, DeliveryStatus::Delivered, 40, "-"),
        done(3, DeliveryStatus::Dead, 50, "permanent failure: HTTP 400 from billing"),
    ];
    s.settle("me", batch).await.unwrap();
    let count = |f: FailedFilter| async move { s.count_failed(f).await.unwrap() };
    let all = FailedFilter::default;
    assert_eq!(count(all()).await, 3);
    let only = |statuses: Vec<DeliveryStatus>| FailedFilter { statuses, ..all() };
    assert_eq!(count(only(vec![DeliveryStatus::Discarded])).await, 1);
    assert_eq!(
        count(only(vec![DeliveryStatus::Delivered])).await,
        0,
        "only failed ones"
    );
    assert_eq!(
        count(FailedFilter {
            since: Some(25),
            ..all()
        })
        .await,
        2
    );
    assert_eq!(
        count(FailedFilter {
            until: Some(25),
            ..all()
        })
        .await,
        1
    );
    let http_400 = FailedFilter {
        error_contains: Some("http 400".into()),
        ..all()
    };
    assert_eq!(count(http_400.clone()).await, 2, "case-insensitive");
    let crm_400 = FailedFilter {
        target: Some(t("crm")),
        ..http_400
    };
    assert_eq!(count(crm_400).await, 1);
    let typed = |glob: &str| FailedFilter {
        event_type: Some(glob.into()),
        ..all()
    };
    assert_eq!(count(typed("order.*")).await, 3);
    assert_eq!(count(typed("order.?reated")).await, 3);
    assert_eq!(count(typed("order_created")).await, 0, "`_` is literal in a glob");
    assert_eq!(count(typed("order.[c]reated")).await, 0, "`[` is literal in a glob");
    assert_eq!(count(typed("Order.*")).await, 0, "case-sensitive");
    let one = FailedFilter {
        delivery_ids: vec![bill[0].delivery_id, crm[2].delivery_id],
        ..all()
    };
    assert_eq!(count(one).await, 1, "a delivered one is not failed");

    let page = s.list_failed(all(), 0, 2).await.unwrap();
    assert_eq!(page.len(), 2);
    assert!(page[0].delivery_id < page[1].delivery_id, "oldest first");
    // One ingest's deliveries are stored target by target (`store::layout`): the first page
    // holds the first event's two, whichever target's comes first.
    let billing = page
        .iter()
        .find(|f| f.target.as_str() == "billing")
        .expect("the first event's billing delivery is on the first page");
    assert_eq!(
        (billing.status, billing.attempts, billing.failed_at),
        (DeliveryStatus::Dead, 1, 50)
    );
    assert_eq!(billing.event_type, "order.created");
    assert_eq!(billing.event_id, bill[0].event.id);
    assert_eq!(
        billing.last_error.as_deref(),
        Some("permanent failure: HTTP 400 from billing")
    );
    let rest = s.list_failed(all(), page[1].delivery_id, 2).await.unwrap();
    assert_eq!(rest.len(), 1);
    assert_eq!(
        (rest[0].delivery_id, rest[0].status),
        (crm[1].delivery_id, DeliveryStatus::Discarded)
    );

    assert_eq!(
        s.replay(only(vec![DeliveryStatus::Discarded]), 10, 60).await.unwrap(),
        1
    );
    assert_eq!(count(all()).await, 2);
    assert_eq!(s.next_due(&t("crm")).await.unwrap(), Some(60));
}

pub(super) async fn replay_resets_attempts_keeps_history_and_is_idempotent(db: &dyn Backend) {
    let (a, b) = (db.open().await, db.open().await);
    a.ingest(vec![event(None, &["crm", "billing"]), event(None, &["crm"])], 0)
        .await
        .unwrap();
    for target in ["crm", "billing"] {
        let error = format!("permanent failure: HTTP 400 from {target}");
        finish(b.as_ref(), target, DeliveryStatus::Dead, 10, Some(&error)).await;
    }
    let only_crm = FailedFilter {
        target: Some(t("crm")),
        error_contains: Some("http 400".into()),
        event_type: Some("order.*".into()),
        ..FailedFilter::default()
    };
    assert_eq!(a.count_failed(only_crm.clone()).await.unwrap(), 2);
    assert_eq!(a.list_failed(FailedFilter::default(), 0, 10).await.unwrap().len(), 3);
    assert_eq!(
        a.replay(only_crm.clone(), 1, 20).await.unwrap(),
        1,
        "limit caps a chunk"
    );
    assert_eq!(b.replay(only_crm.clone(), 100, 20).await.unwrap(), 1);
    assert_eq!(
        a.replay(only_crm, 100, 20).await.unwrap(),
        0,
        "replaying again does nothing"
    );

    let again = b.claim(claim("crm", 10, "w", 30, 1_000)).await.unwrap();
    assert_eq!(again.len(), 2);
    assert!(
        again.iter().all(|c| c.attempt == 1 && c.seq == 2),
        "count reset, history numbering goes on"
    );
    let detail = a.event(again[0].event.id).await.unwrap().unwrap();
    let crm = detail.deliveries.iter().find(|d| d.target.as_str() == "crm").unwrap();
    let outcomes: Vec<_> = crm.history.iter().map(|h| h.outcome).collect();
    assert_eq!(
        outcomes,
        [AttemptOutcome::Permanent, AttemptOutcome::Running],
        "the first attempt's record is kept"
    );
}

pub(super) async fn prune_deletes_finished_events_failed_deliveries_and_old_keys(s: &dyn Store) {
    const DAY: Millis = 24 * 3_600_000;
    let t0: Millis = 1_000 * DAY;
    let keyed = |key: &str, targets: &[&str]| event(Some(key), targets);
    // Old: one delivered everywhere, one with a dead delivery, one routed nowhere.
    let old = s
        .ingest(vec![keyed("a", &["ok"]), keyed("b", &["bad"]), keyed("c", &[])], t0)
        .await
        .unwrap();
    finish(s, "ok", DeliveryStatus::Delivered, t0, None).await;
    finish(s, "bad", DeliveryStatus::Dead, t0, Some("HTTP 400")).await;
    // Young, delivered; and old but pending.
    let young = s.ingest(vec![keyed("d", &["ok"])], t0 + 6 * DAY).await.unwrap();
    finish(s, "ok", DeliveryStatus::Delivered, t0 + 6 * DAY, None).await;
    let waiting = s.ingest(vec![keyed("e", &["later"])], t0).await.unwrap();

    let cutoff = t0 + DAY;
    assert_eq!(s.prune_finished(cutoff, 1).await.unwrap(), 1, "in batches");
    assert_eq!(s.prune_finished(cutoff, 10).await.unwrap(), 1);
    assert_eq!(s.prune_finished(cutoff, 10).await.unwrap(), 0);
    assert!(s.event(old[0].id).await.unwrap().is_none(), "delivered: deleted");
    assert!(s.event(old[2].id).await.unwrap().is_none(), "no deliveries: deleted");
    assert!(s.event(old[1].id).await.unwrap().is_some(), "dead: kept");
    assert!(s.event(young[0].id).await.unwrap().is_some(), "young: kept");
    assert!(s.event(waiting[0].id).await.unwrap().is_some(), "pending: kept");

    // The ledger still knows the deleted event's key: a late retry is a duplicate.
    let again = s.ingest(vec![keyed("a", &["ok"])], cutoff).await.unwrap();
    assert_eq!((again[0].duplicate, again[0].id), (true, old[0].id));
    // Past the ledger's window, the key is forgotten.
    assert_eq!(s.prune_idempotency_keys(cutoff, 2).await.unwrap(), 2);
    assert_eq!(s.prune_idempotency_keys(cutoff, 10).await.unwrap(), 2);
    let fresh = s.ingest(vec![keyed("a", &["ok"])], cutoff).await.unwrap();
    assert!(!fresh[0].duplicate);

    // `outboxd prune` removes the dead one and its event, once.
    let bad = FailedFilter {
        target: Some(t("bad")),
        ..FailedFilter::default()
    };
    assert_eq!(s.prune_failed(bad.clone(), 10).await.unwrap(), 1);
    assert!(s.event(old[1].id).await.unwrap().is_none());
    assert_eq!(s.prune_failed(bad, 10).await.unwrap(), 0);
    let counts = s.status_counts().await.unwrap();
    assert!(!counts.contains_key("bad"));
    assert_eq!(counts["later"][&DeliveryStatus::Pending], 1);
}

pub(super) async fn delivery_ids_are_never_reused_after_a_prune(s: &dyn Store) {
    const DAY: Millis = 24 * 3_600_000;
    let t0: Millis = 1_000 * DAY;
    // Every delivery finished and pruned: the table is empty.
    s.ingest(vec![event(None, &["ok", "bad"]), event(None, &["ok"])], t0)
        .await
        .unwrap();
    let mut earlier = finish(s, "ok", DeliveryStatus::Delivered, t0, None).await;
    earlier.extend(finish(s, "bad", DeliveryStatus::Dead, t0, Some("HTTP 400")).await);
    assert_eq!(earlier.len(), 3);
    s.prune_failed(FailedFilter::default(), 10).await.unwrap();
    while s.prune_finished(t0 + DAY, 10).await.unwrap() > 0 {}
    assert!(s.status_counts().await.unwrap().is_empty(), "all pruned");
    // New deliveries get ids above every earlier one.
    s.ingest(vec![event(None, &["ok", "bad"])], t0 + DAY).await.unwrap();
    let later = [
        finish(s, "ok", DeliveryStatus::Delivered, t0 + DAY, None).await,
        finish(s, "bad", DeliveryStatus::Dead, t0 + DAY, None).await,
    ]
    .concat();
    let highest = earlier.iter().max().copied().unwrap();
    assert_eq!(later.len(), 2);
    assert!(
        later.iter().all(|id| *id > highest),
        "earlier {earlier:?}, later {later:?}"
    );
}

pub(super) async fn oldest_due_is_per_target_and_only_due(s: &dyn Store) {
    s.ingest(vec![event(None, &["crm"])], 10).await.unwrap();
    s.ingest(vec![event(None, &["crm"])], 20).await.unwrap();
    s.ingest(vec![event(None, &["billing"])], 30).await.unwrap();
    let due = |pairs: &[(&str, Millis)]| -> BTreeMap<String, Millis> {
        pairs.iter().map(|(t, at)| (t.to_string(), *at)).collect()
    };
    assert_eq!(s.oldest_due(25).await.unwrap(), due(&[("crm", 10)]));
    assert_eq!(s.oldest_due(30).await.unwrap(), due(&[("billing", 30), ("crm", 10)]));
    assert_eq!(s.claim(claim("crm", 1, "w", 30, 100)).await.unwrap().len(), 1);
    assert_eq!(s.oldest_due(30).await.unwrap(), due(&[("billing", 30), ("crm", 20)]));
    assert_eq!(s.next_due(&t("crm")).await.unwrap(), Some(20));
}
