//! Ingest through `POST /v1/events`: idempotency, atomic batches, and rejection of bad input.

use std::collections::BTreeSet;
use std::time::Duration;

use serde_json::{Value, json};
use testkit::{Host, Receiver, Target};

fn host_with_sink(rx: &Receiver) -> Host {
    let mut host = Host::new();
    host.add_target("sink", &Target::webhook(&rx.url("/sink")).events(&["order.*"]));
    host
}

fn id_of(v: &Value) -> String {
    v["id"].as_str().unwrap_or_else(|| panic!("no id in {v}")).to_owned()
}

fn assert_error_body(what: &str, status: u16, body: &Value) {
    assert!(
        body["error"].as_str().is_some_and(|e| !e.trim().is_empty()),
        "{what}: answered {status} without a JSON {{\"error\": ...}} body: {body}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_repeated_idempotency_key_returns_the_first_event() {
    let rx = Receiver::start().await;
    let mut host = host_with_sink(&rx);
    host.start().await;

    let first = json!({"type": "order.created", "payload": {"order_id": 1}, "idempotency_key": "order-1"});
    let (status, body) = host.post_event(&first).await;
    assert_eq!(status, 202, "{body}");
    assert_eq!(body["duplicate"], false, "{body}");
    let id = id_of(&body);

    let (status, body) = host.post_event(&first).await;
    assert_eq!(status, 200, "a duplicate is not accepted anew: {body}");
    assert_eq!(body["duplicate"], true, "{body}");
    assert_eq!(id_of(&body), id);

    // Same key, different content: still the first event.
    let (status, body) = host
        .post_event(&json!({"type": "order.updated", "payload": {"order_id": 999}, "idempotency_key": "order-1"}))
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["duplicate"], true, "{body}");
    assert_eq!(id_of(&body), id);

    let ev = host.get_event(&id).await;
    assert_eq!(ev["type"], "order.created", "{ev:#}");
    assert_eq!(ev["payload"], json!({"order_id": 1}), "{ev:#}");
    assert_eq!(ev["idempotency_key"], "order-1", "{ev:#}");
    host.wait_delivered(&id, &["sink"]).await;

    // Another key is another event.
    let (status, body) = host
        .post_event(&json!({"type": "order.created", "payload": {"order_id": 2}, "idempotency_key": "order-2"}))
        .await;
    assert_eq!(status, 202, "{body}");
    assert_ne!(id_of(&body), id);
    host.wait_delivered(&id_of(&body), &["sink"]).await;

    // One delivery per distinct event, and no more.
    rx.expect_no_more_at("/sink", 2, Duration::from_millis(300)).await;

    host.stop().await;
    assert_eq!(host.count_rows("events"), 2);
    assert_eq!(host.count_rows("deliveries"), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batches_are_ingested_atomically() {
    let rx = Receiver::start().await;
    let mut host = host_with_sink(&rx);
    host.start().await;

    let item = |key: &str, n: u32| json!({"type": "order.created", "payload": {"n": n}, "idempotency_key": key});

    // A batch of three new events.
    let (status, body) = host
        .post_event(&json!([item("b-0", 0), item("b-1", 1), item("b-2", 2)]))
        .await;
    assert_eq!(status, 202, "{body}");
    let answers = body
        .as_array()
        .unwrap_or_else(|| panic!("a batch answers an array: {body}"));
    assert_eq!(answers.len(), 3, "{body}");
    assert!(answers.iter().all(|a| a["duplicate"] == false), "{body}");
    let ids: Vec<String> = answers.iter().map(id_of).collect();
    assert_eq!(ids.iter().collect::<BTreeSet<_>>().len(), 3, "distinct ids: {ids:?}");
    for (n, id) in ids.iter().enumerate() {
        let ev = host.get_event(id).await;
        assert_eq!(ev["payload"], json!({"n": n}), "answers are in request order: {ev:#}");
    }

    // A batch mixing a duplicate and a new event.
    let (status, body) = host.post_event(&json!([item("b-0", 0), item("b-3", 3)])).await;
    assert_eq!(status, 202, "something new was accepted: {body}");
    assert_eq!(body[0]["duplicate"], true, "{body}");
    assert_eq!(body[0]["id"], ids[0].as_str(), "{body}");
    assert_eq!(body[1]["duplicate"], false, "{body}");

    // A batch of duplicates only.
    let (status, body) = host.post_event(&json!([item("b-1", 1), item("b-2", 2)])).await;
    assert_eq!(status, 200, "nothing new: {body}");
    assert_eq!(body[0]["id"], ids[1].as_str(), "{body}");
    assert_eq!(body[1]["id"], ids[2].as_str(), "{body}");
    assert!(
        body.as_array()
            .is_some_and(|a| a.iter().all(|x| x["duplicate"] == true)),
        "{body}"
    );

    // A batch with one invalid item stores nothing.
    let (status, body) = host
        .post_event(&json!([
            item("c-0", 10),
            {"payload": {"n": 11}, "idempotency_key": "c-1"},
            item("c-2", 12),
        ]))
        .await;
    assert!((400..500).contains(&status), "invalid batch answered {status}: {body}");
    assert_error_body("batch with an item missing its type", status, &body);
    // Proof that c-0 and c-2 were not stored: posting them now creates them.
    for (key, n) in [("c-0", 10), ("c-2", 12)] {
        let (status, body) = host.post_event(&item(key, n)).await;
        assert_eq!(status, 202, "{key} must not exist after the rejected batch: {body}");
        assert_eq!(body["duplicate"], false, "{key}: {body}");
    }

    host.stop().await;
    // b-0..b-3 and c-0, c-2.
    assert_eq!(host.count_rows("events"), 6);
    assert_eq!(host.count_rows("deliveries"), 6);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_requests_are_rejected_and_store_nothing() {
    let rx = Receiver::start().await;
    let mut host = host_with_sink(&rx);
    host.set_config("max_payload_bytes", 1024);
    host.start().await;

    let good = host.enqueue("order.created", json!({"order_id": 1})).await;

    let big = "x".repeat(4096);
    let cases: Vec<(&str, String, u16)> = vec![
        (
            "invalid JSON",
            r#"{"type": "order.created", "payload": "#.to_owned(),
            400,
        ),
        ("not an object", r#""order.created""#.to_owned(), 400),
        ("missing type", r#"{"payload": {"a": 1}}"#.to_owned(), 400),
        ("empty type", r#"{"type": "", "payload": {"a": 1}}"#.to_owned(), 400),
        (
            "type is a number",
            r#"{"type": 5, "payload": {"a": 1}}"#.to_owned(),
            400,
        ),
        (
            "idempotency_key is a number",
            r#"{"type": "order.created", "payload": {}, "idempotency_key": 7}"#.to_owned(),
            400,
        ),
        (
            "headers is an array",
            r#"{"type": "order.created", "payload": {}, "headers": ["a"]}"#.to_owned(),
            400,
        ),
        (
            "header value is a number",
            r#"{"type": "order.created", "payload": {}, "headers": {"h": 1}}"#.to_owned(),
            400,
        ),
        (
            "unknown field",
            r#"{"type": "order.created", "payload": {}, "colour": "red"}"#.to_owned(),
            400,
        ),
        // PostgreSQL's text cannot hold NUL: refused as input on every store.
        (
            "NUL in idempotency_key",
            r#"{"type": "order.created", "payload": {}, "idempotency_key": "k\u0000"}"#.to_owned(),
            400,
        ),
        (
            "NUL in ordering_key",
            r#"{"type": "order.created", "payload": {}, "ordering_key": "a\u0000b"}"#.to_owned(),
            400,
        ),
        (
            "priority above 3600",
            r#"{"type": "order.created", "payload": {}, "priority": 3601}"#.to_owned(),
            400,
        ),
        (
            "deliver_at below 0",
            r#"{"type": "order.created", "payload": {}, "deliver_at": -1}"#.to_owned(),
            400,
        ),
        (
            "delay_ms over 366 days",
            r#"{"type": "order.created", "payload": {}, "delay_ms": 31622400001}"#.to_owned(),
            400,
        ),
        (
            "deliver_at as text",
            r#"{"type": "order.created", "payload": {}, "deliver_at": "tomorrow"}"#.to_owned(),
            400,
        ),
        (
            "payload over max_payload_bytes",
            json!({"type": "order.created", "payload": {"blob": big}}).to_string(),
            413,
        ),
    ];
    let mut wrong = Vec::new();
    for (what, body, expected) in &cases {
        let (status, answer) = host.post_raw(body.clone(), "application/json").await;
        if status != *expected || answer["error"].as_str().is_none_or(|e| e.trim().is_empty()) {
            wrong.push(format!(
                "{what}: expected {expected} with {{\"error\": ...}}, got {status} {answer}"
            ));
        }
    }
    assert!(wrong.is_empty(), "bad requests handled wrongly:\n{}", wrong.join("\n"));

    let (status, body) = host.get_event_raw("01890000-0000-7000-8000-000000000000").await;
    assert_eq!(status, 404, "{body}");
    assert_error_body("unknown event id", status, &body);

    // The host is still fine and accepts good input.
    let good2 = host.enqueue("order.paid", json!({"order_id": 1})).await;
    host.wait_delivered(&good, &["sink"]).await;
    host.wait_delivered(&good2, &["sink"]).await;
    assert_eq!(rx.count_at("/sink"), 2, "{}", rx.describe());

    host.stop().await;
    assert_eq!(host.count_rows("events"), 2, "only the two good events are stored");
    assert_eq!(host.count_rows("deliveries"), 2);
}

/// Scheduled deliveries: `delay_ms` (and `deliver_at`) keep the deliveries `pending`, shown as
/// scheduled and unattempted, until their time; a time already past is now; an ordered target
/// keeps a key's order, so an unscheduled event waits behind a scheduled one of its key.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scheduled_events_wait_for_their_time_and_keep_their_keys_order() {
    let rx = Receiver::start().await;
    let mut host = Host::new();
    host.add_target("sink", &Target::webhook(&rx.url("/sink")).events(&["order.*"]))
        .add_target(
            "ledger",
            &Target::webhook(&rx.url("/ledger")).events(&["order.*"]).ordered(true),
        );
    host.start().await;

    let posted = std::time::Instant::now();
    let (status, body) = host
        .post_event(&json!({"type": "order.created", "payload": {"n": 1}, "delay_ms": 2000, "ordering_key": "o-1"}))
        .await;
    assert_eq!(status, 202, "{body}");
    let scheduled = id_of(&body);
    let (status, body) = host
        .post_event(&json!({"type": "order.paid", "payload": {"n": 2}, "ordering_key": "o-1"}))
        .await;
    assert_eq!(status, 202, "{body}");
    let follower = id_of(&body);
    let (status, body) = host
        .post_event(&json!({"type": "order.created", "payload": {"n": 3}, "deliver_at": 1000}))
        .await;
    assert_eq!(status, 202, "{body}");
    let past = id_of(&body);

    // The past-scheduled event goes now; the unordered sink gets the follower at once.
    host.wait_delivered(&past, &["sink", "ledger"]).await;
    host.wait_delivered(&follower, &["sink"]).await;
    let ev = host.get_event(&scheduled).await;
    if posted.elapsed() < Duration::from_millis(1500) {
        for d in ev["deliveries"].as_array().expect("deliveries") {
            assert_eq!(d["status"], "pending", "{ev:#}");
            assert_eq!(d["scheduled"], true, "{ev:#}");
            assert_eq!(d["attempts"], 0, "{ev:#}");
        }
        let follower_ev = host.get_event(&follower).await;
        assert_eq!(
            testkit::status_of(&follower_ev, "ledger"),
            Some("pending"),
            "{follower_ev:#}"
        );
    }
    host.wait_delivered(&scheduled, &["sink", "ledger"]).await;
    host.wait_delivered(&follower, &["ledger"]).await;
    for r in rx
        .requests()
        .iter()
        .filter(|r| r.event_id() == Some(scheduled.as_str()))
    {
        assert!(
            r.received_at.duration_since(posted) >= Duration::from_millis(1990),
            "the scheduled event reached {} {:?} after it was posted, before its delay",
            r.path,
            r.received_at.duration_since(posted)
        );
    }
    let ledger: Vec<String> = rx
        .requests_at("/ledger")
        .iter()
        .filter_map(|r| r.event_id().map(str::to_owned))
        .collect();
    let (a, b) = (
        ledger.iter().position(|i| *i == scheduled),
        ledger.iter().position(|i| *i == follower),
    );
    assert!(
        a.is_some() && a < b,
        "the ledger got o-1's events out of order: {ledger:?}"
    );
    let ev = host.get_event(&scheduled).await;
    assert!(
        ev["deliveries"]
            .as_array()
            .unwrap()
            .iter()
            .all(|d| d["scheduled"] == false),
        "{ev:#}"
    );
}

/// Priority: behind a backlog of a paused target, an event with `priority = 60` (a minute's
/// head start) is delivered first once the target resumes; the rest follow in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_priority_event_goes_ahead_of_the_backlog() {
    let rx = Receiver::start().await;
    let mut host = Host::new();
    host.add_target(
        "sink",
        &Target::webhook(&rx.url("/sink"))
            .events(&["order.*"])
            .concurrency(1)
            .concurrency_mode("fixed"),
    );
    host.start().await;
    let (status, body) = host.post_json("/v1/targets/sink/pause", &json!({})).await;
    assert_eq!(status, 200, "{body}");

    let mut backlog = Vec::new();
    for n in 0..5 {
        backlog.push(host.enqueue("order.created", json!({"n": n})).await);
    }
    let (status, body) = host
        .post_event(&json!({"type": "order.created", "payload": {"urgent": true}, "priority": 60}))
        .await;
    assert_eq!(status, 202, "{body}");
    let urgent = id_of(&body);
    let (status, body) = host.post_json("/v1/targets/sink/resume", &json!({})).await;
    assert_eq!(status, 200, "{body}");

    for id in backlog.iter().chain([&urgent]) {
        host.wait_delivered(id, &["sink"]).await;
    }
    let order: Vec<String> = rx
        .requests_at("/sink")
        .iter()
        .filter_map(|r| r.event_id().map(str::to_owned))
        .collect();
    let mut expected = vec![urgent.clone()];
    expected.extend(backlog);
    assert_eq!(order, expected, "the urgent event first, then the backlog in order");
}
