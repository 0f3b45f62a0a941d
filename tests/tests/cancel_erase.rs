//! Cancelling an event through the HTTP API and the CLI (issue 27): what each delivery
//! becomes (a waiting and a dead one cancelled, a delivered one left, one in flight left to
//! finish), that a cancelled delivery is never attempted again, counted under `cancelled`,
//! by event id or producer key, idempotent; the errors (404, 400) and the `admin` scope.
//! Erasing an event's payload: refused (409) while a delivery is not final, then the payload
//! and headers gone and the event, its history and its key kept; never replayed afterwards;
//! and `payload_retention` erasing old finished events.

use std::time::Duration;

use serde_json::{Value, json};
use testkit::{Behavior, Host, Receiver, Target, delivery, status_of, target_count};

/// `(target, result, was, status)` of each delivery in a cancellation's answer.
fn results(answer: &Value) -> Vec<(String, String, String, String)> {
    answer["deliveries"]
        .as_array()
        .unwrap_or_else(|| panic!("no deliveries in {answer}"))
        .iter()
        .map(|d| {
            let s = |k: &str| d[k].as_str().unwrap_or_else(|| panic!("no {k} in {d}")).to_owned();
            (s("target"), s("result"), s("was"), s("status"))
        })
        .collect()
}

fn row(target: &str, result: &str, was: &str, status: &str) -> (String, String, String, String) {
    (target.into(), result.into(), was.into(), status.into())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_stops_waiting_and_dead_deliveries_and_reports_each_target() {
    let rx = Receiver::builder()
        .path("/ok", Behavior::ok())
        .path("/down", Behavior::status(503))
        .path("/bad", Behavior::status(400))
        .path("/stuck", Behavior::ok().hang())
        .start()
        .await;
    let mut host = Host::new();
    host.add_target("ok", &Target::webhook(&rx.url("/ok")))
        // A retry waits 8 s: the test cancels it meanwhile.
        .add_target("down", &Target::webhook(&rx.url("/down")).retry(10, 8_000, 8_000))
        .add_target("bad", &Target::webhook(&rx.url("/bad")))
        .add_target("stuck", &Target::webhook(&rx.url("/stuck")).timeout_ms(60_000));
    host.start().await;

    let (status, body) = host
        .post_event(&json!({"type": "order.created", "payload": {"n": 1}, "idempotency_key": "order-1"}))
        .await;
    assert_eq!(status, 202, "{body}");
    let id = body["id"].as_str().unwrap().to_owned();
    host.wait_for(&id, testkit::default_timeout(), |ev| {
        status_of(ev, "ok") == Some("delivered")
            && status_of(ev, "bad") == Some("dead")
            && status_of(ev, "down") == Some("pending")
            && delivery(ev, "down")["attempts"] == 1
            && status_of(ev, "stuck") == Some("in_flight")
            && !rx.requests_at("/stuck").is_empty()
    })
    .await;

    let (status, answer) = host.post_json(&format!("/v1/events/{id}/cancel"), &json!(null)).await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["event_id"], id.as_str());
    assert_eq!(answer["cancelled"], 2, "{answer}");
    assert_eq!(
        results(&answer),
        [
            row("bad", "cancelled", "dead", "cancelled"),
            row("down", "cancelled", "pending", "cancelled"),
            row("ok", "already_final", "delivered", "delivered"),
            row("stuck", "in_flight", "in_flight", "in_flight"),
        ]
    );
    let event = host.get_event(&id).await;
    for (target, status) in [("bad", "cancelled"), ("down", "cancelled"), ("ok", "delivered")] {
        assert_eq!(status_of(&event, target), Some(status), "{event:#}");
    }
    assert_eq!(delivery(&event, "down")["next_attempt_at"], Value::Null, "{event:#}");
    let targets = host.targets().await;
    assert_eq!(target_count(&targets, "down", "cancelled"), 1, "{targets:#}");
    assert_eq!(target_count(&targets, "bad", "dead"), 0, "{targets:#}");
    let (_, metrics) = host.get_json("/metrics").await;
    let metrics = metrics.as_str().unwrap_or_default().to_owned();
    assert!(
        metrics.contains(r#"outboxd_deliveries{target="down",status="cancelled"} 1"#),
        "{metrics}"
    );
    // Not failed any more: neither listed nor replayed.
    let (_, failed) = host.get_json("/v1/deliveries/failed?target=bad").await;
    assert_eq!(failed["deliveries"], json!([]), "{failed}");
    let job = host.replay_job(&json!({"target": "bad"})).await;
    assert_eq!(
        (&job["status"], &job["total"], &job["replayed"]),
        (&json!("done"), &json!(0), &json!(0)),
        "{job}"
    );

    // The retry that was due 8 s after the first attempt never comes.
    tokio::time::sleep(Duration::from_secs(9)).await;
    assert_eq!(rx.requests_at("/down").len(), 1, "{}", rx.describe());
    assert_eq!(rx.requests_at("/bad").len(), 1, "{}", rx.describe());
    assert_eq!(status_of(&host.get_event(&id).await, "down"), Some("cancelled"));

    // Again, by the producer's key: nothing more to cancel; each says what it is.
    let (status, again) = host
        .post_json("/v1/events/cancel", &json!({"idempotency_key": "order-1"}))
        .await;
    assert_eq!(status, 200, "{again}");
    assert_eq!(again["cancelled"], 0, "{again}");
    assert_eq!(
        results(&again),
        [
            row("bad", "already_final", "cancelled", "cancelled"),
            row("down", "already_final", "cancelled", "cancelled"),
            row("ok", "already_final", "delivered", "delivered"),
            row("stuck", "in_flight", "in_flight", "in_flight"),
        ]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_refuses_unknown_events_and_bad_input_and_needs_the_admin_scope() {
    let rx = Receiver::builder().path("/down", Behavior::status(503)).start().await;
    let mut host = Host::new();
    host.add_target("down", &Target::webhook(&rx.url("/down")).retry(10, 60_000, 60_000))
        .add_api_token("reader", "read-token-0123456789abcdef", &["read", "ingest"])
        .add_api_token("admin", "admin-token-0123456789abcdef", &["admin"]);
    host.start().await;
    host.set_api_token("admin-token-0123456789abcdef");
    let id = host.enqueue("order.created", json!({"n": 2})).await;

    let unknown = "01930000-0000-7000-8000-000000000000";
    let (status, body) = host
        .post_json(&format!("/v1/events/{unknown}/cancel"), &json!(null))
        .await;
    assert_eq!(status, 404, "{body}");
    assert!(body["error"].as_str().unwrap().contains(unknown), "{body}");
    let (status, body) = host.post_json("/v1/events/not-a-uuid/cancel", &json!(null)).await;
    assert_eq!(status, 400, "{body}");
    let (status, body) = host
        .post_json("/v1/events/cancel", &json!({"idempotency_key": "never-sent"}))
        .await;
    assert_eq!(status, 404, "{body}");
    for bad in [
        json!({}),
        json!({"idempotency_key": ""}),
        json!({"key": "x"}),
        json!([1]),
    ] {
        let (status, body) = host.post_json("/v1/events/cancel", &bad).await;
        assert_eq!(status, 400, "{bad}: {body}");
        assert!(body["error"].is_string(), "{bad}: {body}");
    }
    // Nothing changed.
    let event = host.get_event(&id).await;
    assert_ne!(status_of(&event, "down"), Some("cancelled"), "{event:#}");

    // A token without `admin` may read the event but not cancel it.
    host.set_api_token("read-token-0123456789abcdef");
    let (status, body) = host.post_json(&format!("/v1/events/{id}/cancel"), &json!(null)).await;
    assert_eq!(status, 403, "{body}");
    let (status, body) = host
        .post_json("/v1/events/cancel", &json!({"idempotency_key": "x"}))
        .await;
    assert_eq!(status, 403, "{body}");
    assert_ne!(status_of(&host.get_event(&id).await, "down"), Some("cancelled"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_cancels_beside_a_running_serve() {
    let rx = Receiver::builder().path("/down", Behavior::status(503)).start().await;
    let mut host = Host::new();
    host.add_target("down", &Target::webhook(&rx.url("/down")).retry(10, 60_000, 60_000));
    host.start().await;
    let (status, body) = host
        .post_event(&json!({"type": "order.created", "payload": {}, "idempotency_key": "cli-1"}))
        .await;
    assert_eq!(status, 202, "{body}");
    let id = body["id"].as_str().unwrap().to_owned();
    host.wait_for(&id, testkit::default_timeout(), |ev| {
        status_of(ev, "down") == Some("pending") && delivery(ev, "down")["attempts"] == 1
    })
    .await;

    let out = host.run_cli(&["cancel", "--idempotency-key", "cli-1"]).await;
    assert!(out.status.success(), "{out:?}");
    assert!(out.stdout.contains(&format!("event {id}")), "{}", out.stdout);
    assert!(
        out.stdout.contains("down") && out.stdout.contains("cancelled (was pending)"),
        "{}",
        out.stdout
    );
    assert_eq!(status_of(&host.get_event(&id).await, "down"), Some("cancelled"));

    let out = host.run_cli(&["cancel", &id]).await;
    assert!(out.status.success(), "{out:?}");
    assert!(out.stdout.contains("already final: cancelled"), "{}", out.stdout);
    let out = host.run_cli(&["cancel", "01930000-0000-7000-8000-000000000000"]).await;
    assert!(!out.status.success(), "{out:?}");
    assert!(out.stderr.contains("no event with id"), "{}", out.stderr);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn erasing_a_payload_waits_for_final_deliveries_and_keeps_the_event() {
    let rx = Receiver::builder()
        .path("/ok", Behavior::ok())
        .path("/down", Behavior::status(503))
        .path("/bad", Behavior::status(400))
        .start()
        .await;
    let mut host = Host::new();
    host.add_target("ok", &Target::webhook(&rx.url("/ok")).events(&["order.*"]))
        .add_target(
            "down",
            &Target::webhook(&rx.url("/down"))
                .events(&["order.*"])
                .retry(10, 60_000, 60_000),
        )
        .add_target("bad", &Target::webhook(&rx.url("/bad")).events(&["refund.*"]));
    host.start().await;

    let (status, body) = host
        .post_event(&json!({"type": "order.created", "payload": {"card": "4111"},
                            "headers": {"x-tenant": "acme"}, "idempotency_key": "erase-1"}))
        .await;
    assert_eq!(status, 202, "{body}");
    let id = body["id"].as_str().unwrap().to_owned();
    host.wait_for(&id, testkit::default_timeout(), |ev| {
        status_of(ev, "ok") == Some("delivered") && delivery(ev, "down")["attempts"] == 1
    })
    .await;

    // `down` waits for a retry: refused, naming it; nothing changed.
    let (status, body) = host.delete(&format!("/v1/events/{id}/payload")).await;
    assert_eq!(status, 409, "{body}");
    let error = body["error"].as_str().unwrap();
    assert!(error.contains("down (pending)") && !error.contains("ok ("), "{error}");
    let event = host.get_event(&id).await;
    assert_eq!(event["payload"], json!({"card": "4111"}), "{event:#}");
    assert_eq!(event["erased_at"], Value::Null, "{event:#}");

    // Cancelled, every delivery is final: erased.
    let (status, _) = host.post_json(&format!("/v1/events/{id}/cancel"), &json!(null)).await;
    assert_eq!(status, 200);
    let (status, erased) = host.delete(&format!("/v1/events/{id}/payload")).await;
    assert_eq!(status, 200, "{erased}");
    assert_eq!(
        (erased["event_id"].as_str(), erased["already_erased"].as_bool()),
        (Some(id.as_str()), Some(false))
    );
    let event = host.get_event(&id).await;
    assert_eq!(event["payload"], Value::Null, "{event:#}");
    assert_eq!(event["headers"], json!({}), "{event:#}");
    assert_eq!(event["erased_at"], erased["erased_at"], "{event:#}");
    assert_eq!(event["idempotency_key"], "erase-1", "{event:#}");
    assert_eq!(testkit::history(&event, "ok").len(), 1, "the history stays: {event:#}");
    assert_eq!(status_of(&event, "down"), Some("cancelled"));

    // Again, by the producer's key: already erased. The key still names the event.
    let (status, again) = host.delete("/v1/events/payload?idempotency_key=erase-1").await;
    assert_eq!(status, 200, "{again}");
    assert_eq!(
        (again["event_id"].as_str(), again["already_erased"].as_bool()),
        (Some(id.as_str()), Some(true))
    );
    assert_eq!(again["erased_at"], erased["erased_at"]);
    let (status, dup) = host
        .post_event(&json!({"type": "order.created", "payload": {}, "idempotency_key": "erase-1"}))
        .await;
    assert_eq!(
        (status, dup["duplicate"].as_bool(), dup["id"].as_str()),
        (200, Some(true), Some(id.as_str()))
    );

    // Errors.
    let (status, body) = host.delete("/v1/events/payload?idempotency_key=never-sent").await;
    assert_eq!(status, 404, "{body}");
    for bad in [
        "/v1/events/payload",
        "/v1/events/payload?key=x",
        "/v1/events/payload?idempotency_key=",
    ] {
        let (status, body) = host.delete(bad).await;
        assert_eq!(status, 400, "{bad}: {body}");
        assert!(body["error"].is_string(), "{bad}: {body}");
    }
    let (status, _) = host
        .delete("/v1/events/01930000-0000-7000-8000-000000000000/payload")
        .await;
    assert_eq!(status, 404);
    let (status, _) = host.delete("/v1/events/nope/payload").await;
    assert_eq!(status, 400);

    // A dead delivery is final: its event may be erased, and is then never replayed.
    let refund = host.enqueue("refund.created", json!({"n": 1})).await;
    host.wait_for(&refund, testkit::default_timeout(), |ev| {
        status_of(ev, "bad") == Some("dead")
    })
    .await;
    let (status, body) = host.delete(&format!("/v1/events/{refund}/payload")).await;
    assert_eq!(status, 200, "{body}");
    let job = host.replay_job(&json!({"target": "bad"})).await;
    assert_eq!(
        (&job["status"], &job["total"], &job["replayed"], &job["skipped"]),
        (&json!("done"), &json!(1), &json!(0), &json!(1)),
        "the erased event's dead delivery is skipped: {job}"
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(rx.requests_at("/bad").len(), 1, "{}", rx.describe());
    assert_eq!(status_of(&host.get_event(&refund).await, "bad"), Some("dead"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn payload_retention_erases_old_finished_events_and_keeps_waiting_ones() {
    let rx = Receiver::builder()
        .path("/ok", Behavior::ok())
        .path("/down", Behavior::status(503))
        .start()
        .await;
    let mut host = Host::new();
    host.add_target("ok", &Target::webhook(&rx.url("/ok")).events(&["order.*"]))
        .add_target(
            "down",
            &Target::webhook(&rx.url("/down"))
                .events(&["refund.*"])
                .retry(10, 60_000, 60_000),
        )
        .set_config("payload_retention", "1s")
        .set_config("retention", "1h")
        .set_config("retention_interval_ms", 200);
    host.start().await;
    let done = host.enqueue("order.created", json!({"n": 1})).await;
    let waiting = host.enqueue("refund.created", json!({"n": 2})).await;
    let erased = host
        .wait_for(&done, testkit::default_timeout(), |ev| ev["erased_at"].is_string())
        .await;
    assert_eq!(erased["payload"], Value::Null, "{erased:#}");
    assert_eq!(status_of(&erased, "ok"), Some("delivered"));
    let kept = host.get_event(&waiting).await;
    assert_eq!(
        (kept["payload"].clone(), kept["erased_at"].clone()),
        (json!({"n": 2}), Value::Null),
        "{kept:#}"
    );
}
