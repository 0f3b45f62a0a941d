//! Crash safety: `kill -9` with deliveries in flight loses nothing.

use serde_json::json;
use std::collections::{BTreeMap, BTreeSet};
use testkit::{Behavior, Host, Receiver, Target, default_timeout, delivery, status_of};

const EVENTS: usize = 50;
const TARGETS: [&str; 2] = ["alpha", "beta"];
/// Requests the receiver never answers, per path, before it starts answering 200.
const HUNG: usize = 3;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_with_deliveries_in_flight_then_restart_delivers_everything() {
    let rx = Receiver::builder()
        .path("/alpha", Behavior::ok().hang_first(HUNG))
        .path("/beta", Behavior::ok().hang_first(HUNG))
        .start()
        .await;
    let mut host = Host::new();
    for t in TARGETS {
        // A long timeout keeps the hung attempts in flight until the kill.
        host.add_target(
            t,
            &Target::webhook(&rx.url(&format!("/{t}")))
                .timeout_ms(60_000)
                .concurrency(4)
                .retry(10, 50, 200),
        );
    }
    host.start().await;

    let mut ids = Vec::with_capacity(EVENTS);
    for i in 0..EVENTS {
        ids.push(host.enqueue("order.created", json!({"n": i})).await);
    }

    // Wait until the hung requests are open, plus some progress past them.
    for t in TARGETS {
        let path = format!("/{t}");
        rx.wait_for(&path, HUNG + 2, default_timeout())
            .await
            .unwrap_or_else(|e| panic!("{e}"));
    }
    // The hung requests belong to deliveries the API reports as in flight.
    let hung: Vec<(String, String)> = rx
        .requests()
        .iter()
        .filter(|r| r.reply == testkit::Reply::Hang)
        .map(|r| {
            (
                r.path.trim_start_matches('/').to_owned(),
                r.event_id().expect("outboxd-event-id header").to_owned(),
            )
        })
        .collect();
    assert_eq!(hung.len(), HUNG * TARGETS.len(), "{}", rx.describe());
    for (target, event_id) in &hung {
        let ev = host.get_event(event_id).await;
        assert_eq!(
            status_of(&ev, target),
            Some("in_flight"),
            "a delivery whose request is still open should be in_flight: {ev:#}"
        );
    }

    let status = host.kill_9().await;
    assert!(!status.success(), "kill -9 is not a clean exit: {status}");

    host.restart().await;

    // Everything gets delivered after the restart.
    let expected = (EVENTS * TARGETS.len()) as u64;
    host.wait_for_targets(default_timeout() * 2, |targets| {
        targets.as_array().is_some_and(|ts| {
            TARGETS.iter().all(|name| {
                ts.iter()
                    .find(|t| t["name"] == *name)
                    .is_some_and(|t| t["counts"]["delivered"] == EVENTS as u64)
            })
        })
    })
    .await;

    let mut expected_keys: BTreeMap<&str, BTreeSet<String>> = BTreeMap::new();
    for id in &ids {
        let ev = host.get_event(id).await;
        for t in TARGETS {
            let d = delivery(&ev, t);
            assert_eq!(d["status"], "delivered", "{ev:#}");
            let key = d["idempotency_key"].as_str().expect("idempotency_key");
            expected_keys.entry(t).or_default().insert(key.to_owned());
        }
    }
    for t in TARGETS {
        let seen = rx.idempotency_keys_at(&format!("/{t}"));
        let missing: Vec<&String> = expected_keys[t].difference(&seen).collect();
        assert!(
            missing.is_empty(),
            "{t}: the receiver never saw {} of {EVENTS} keys: {missing:?}",
            missing.len()
        );
        assert_eq!(expected_keys[t].len(), EVENTS, "keys are distinct per event");
    }
    // Keys differ across targets.
    assert!(expected_keys["alpha"].is_disjoint(&expected_keys["beta"]));

    // The deliveries that were in flight at the kill were retried with their key.
    for (target, event_id) in &hung {
        let answered = rx
            .requests_at(&format!("/{target}"))
            .into_iter()
            .any(|r| r.event_id() == Some(event_id.as_str()) && r.reply != testkit::Reply::Hang);
        assert!(
            answered,
            "{target}: event {event_id} was in flight at the kill and never redelivered"
        );
    }

    let targets = host.targets().await;
    for t in targets.as_array().expect("array") {
        assert_eq!(t["counts"]["pending"], 0, "{t}");
        assert_eq!(t["counts"]["in_flight"], 0, "{t}");
        assert_eq!(t["counts"]["dead"], 0, "{t}");
    }

    host.stop().await;
    assert_eq!(host.count_rows("events"), EVENTS as i64);
    assert_eq!(host.count_rows("deliveries"), expected as i64);
    let unsettled = host.sql_i64("SELECT count(*) FROM deliveries WHERE status IN ('pending', 'in_flight')");
    assert_eq!(unsettled, 0);
}
