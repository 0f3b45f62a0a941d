//! Failure handling of the webhook adapter: retries with a stable key, permanent 4xx, Retry-After.

use std::collections::BTreeSet;
use std::time::Duration;

use serde_json::json;
use testkit::{Behavior, Host, Receiver, Target, delivery, history, target_entry};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_failures_then_success_with_the_same_key() {
    let rx = Receiver::builder()
        .path("/flaky", Behavior::ok().fail_first(2, 500))
        .start()
        .await;
    let mut host = Host::new();
    host.add_target("flaky", &Target::webhook(&rx.url("/flaky")).retry(5, 50, 200));
    host.start().await;

    let id = host.enqueue("order.created", json!({"order_id": 1})).await;
    let event = host.wait_delivered(&id, &["flaky"]).await;

    let reqs = rx.requests_at("/flaky");
    assert_eq!(reqs.len(), 3, "two failures and one success:\n{}", rx.describe());
    let key = delivery(&event, "flaky")["idempotency_key"]
        .as_str()
        .expect("delivery has an idempotency_key")
        .to_owned();
    for (i, r) in reqs.iter().enumerate() {
        assert_eq!(r.idempotency_key(), Some(key.as_str()), "request {i}: {r}");
        assert_eq!(r.event_id(), Some(id.as_str()), "request {i}: {r}");
        assert_eq!(r.attempt(), Some(i as u32 + 1), "request {i}: {r}");
    }
    assert_eq!(rx.idempotency_keys_at("/flaky"), BTreeSet::from([key]));

    let d = delivery(&event, "flaky");
    assert_eq!(d["attempts"], 3, "{d:#}");
    let hist = history(&event, "flaky");
    let outcomes: Vec<&str> = hist.iter().filter_map(|h| h["outcome"].as_str()).collect();
    assert_eq!(outcomes, ["retry", "retry", "delivered"], "{d:#}");
    let ns: Vec<u64> = hist.iter().filter_map(|h| h["n"].as_u64()).collect();
    assert_eq!(ns, [1, 2, 3], "{d:#}");
    for h in &hist[..2] {
        let err = h["error"].as_str().unwrap_or_default();
        assert!(err.contains("500"), "a failed attempt's error should mention 500: {h}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_400_is_dead_after_one_attempt_while_others_deliver() {
    let rx = Receiver::builder().path("/reject", Behavior::status(400)).start().await;
    let mut host = Host::new();
    host.add_target("reject", &Target::webhook(&rx.url("/reject")).retry(5, 50, 200))
        .add_target("crm", &Target::webhook(&rx.url("/crm")).retry(5, 50, 200))
        .add_target("billing", &Target::webhook(&rx.url("/billing")).retry(5, 50, 200));
    host.start().await;

    let id = host.enqueue("order.created", json!({"order_id": 2})).await;
    let event = host.wait_settled(&id, &["reject", "crm", "billing"]).await;
    let d = delivery(&event, "reject");
    assert_eq!(d["status"], "dead", "{d:#}");
    assert_eq!(d["attempts"], 1, "{d:#}");
    let last_error = d["last_error"].as_str().unwrap_or_default();
    assert!(last_error.contains("400"), "last_error should mention 400: {d:#}");
    let hist = history(&event, "reject");
    assert_eq!(hist.len(), 1, "{d:#}");
    assert_eq!(hist[0]["outcome"], "permanent", "{d:#}");
    assert_eq!(delivery(&event, "crm")["status"], "delivered", "{event:#}");
    assert_eq!(delivery(&event, "billing")["status"], "delivered", "{event:#}");

    // It stays dead: no further request arrives.
    rx.expect_no_more_at("/reject", 1, Duration::from_millis(600)).await;
    let event = host.get_event(&id).await;
    assert_eq!(delivery(&event, "reject")["status"], "dead");

    let targets = host.targets().await;
    let reject = target_entry(&targets, "reject");
    assert_eq!(reject["counts"]["dead"], 1, "{reject}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retry_after_is_honoured() {
    let rx = Receiver::builder()
        .path("/throttled", Behavior::ok().retry_after_first(1, 429, 2))
        .path("/unavailable", Behavior::ok().retry_after_first(1, 503, 1))
        .start()
        .await;
    let mut host = Host::new();
    // The backoff schedule alone would retry after ~50 ms; Retry-After asks for more.
    host.add_target(
        "throttled",
        &Target::webhook(&rx.url("/throttled")).retry(5, 50, 10_000),
    )
    .add_target(
        "unavailable",
        &Target::webhook(&rx.url("/unavailable")).retry(5, 50, 10_000),
    );
    host.start().await;

    let id = host.enqueue("order.created", json!({"order_id": 3})).await;
    let event = host.wait_delivered(&id, &["throttled", "unavailable"]).await;
    for (path, secs) in [("/throttled", 2u64), ("/unavailable", 1)] {
        let reqs = rx.requests_at(path);
        assert_eq!(reqs.len(), 2, "{path}:\n{}", rx.describe());
        let gap = reqs[1].received_at - reqs[0].received_at;
        assert!(
            gap >= Duration::from_millis(secs * 1000 - 100),
            "{path}: retried after {gap:?} although Retry-After said {secs}s"
        );
        assert_eq!(reqs[0].idempotency_key(), reqs[1].idempotency_key());
    }
    let outcomes: Vec<String> = history(&event, "throttled")
        .iter()
        .filter_map(|h| h["outcome"].as_str().map(str::to_owned))
        .collect();
    assert_eq!(outcomes, ["retry", "delivered"], "{event:#}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn attempts_run_out_and_the_delivery_is_dead() {
    let rx = Receiver::builder().path("/down", Behavior::status(503)).start().await;
    let mut host = Host::new();
    host.add_target("down", &Target::webhook(&rx.url("/down")).retry(3, 50, 100));
    host.start().await;

    let id = host.enqueue("order.created", json!({"order_id": 4})).await;
    let event = host.wait_settled(&id, &["down"]).await;
    let d = delivery(&event, "down");
    assert_eq!(d["status"], "dead", "{d:#}");
    assert_eq!(d["attempts"], 3, "{d:#}");
    assert_eq!(history(&event, "down").len(), 3, "{d:#}");
    assert!(d["last_error"].as_str().unwrap_or_default().contains("503"), "{d:#}");
    rx.expect_no_more_at("/down", 3, Duration::from_millis(400)).await;
}

/// Issue 25: every attempt keeps what the receiver answered (status and the first KiB of its
/// body, as sent), shown in the event's history and the dead-letter listing of the API and by
/// the CLI's `status` and `dead list`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_receivers_answer_is_in_the_history_of_the_api_and_the_cli() {
    const ANSWER: &str = r#"{"error":"upstream exploded"}"#;
    let rx = Receiver::builder()
        .path("/exploding", Behavior::ok().respond_with(|_| (500, ANSWER.to_owned())))
        .start()
        .await;
    let mut host = Host::new();
    host.add_target("exploding", &Target::webhook(&rx.url("/exploding")).retry(2, 50, 200));
    host.start().await;

    let id = host.enqueue("order.created", json!({"order_id": 25})).await;
    let event = host.wait_settled(&id, &["exploding"]).await;
    let d = delivery(&event, "exploding");
    assert_eq!(d["status"], "dead", "two 500s and it gives up: {d:#}");
    let hist = history(&event, "exploding");
    assert_eq!(hist.len(), 2, "{d:#}");
    for h in &hist {
        assert_eq!(h["response"], json!({"status": 500, "body": ANSWER}), "{h}");
    }

    let (status, page) = host.get_json("/v1/deliveries/failed?target=exploding").await;
    assert_eq!(status, 200, "{page}");
    assert_eq!(
        page["deliveries"][0]["last_response"],
        json!({"status": 500, "body": ANSWER}),
        "{page}"
    );

    let out = host.run_cli(&["status", &id]).await;
    assert!(out.status.success(), "{out}");
    assert_eq!(
        out.stdout.matches(&format!("response 500: {ANSWER}")).count(),
        2,
        "one line per attempt:\n{out}"
    );
    let out = host.run_cli(&["dead", "list", "--target", "exploding"]).await;
    assert!(out.status.success(), "{out}");
    assert!(out.stdout.contains("LAST RESPONSE"), "{out}");
    assert!(out.stdout.contains(&format!("500 {ANSWER}")), "{out}");
}

/// Issue 25: a plugin of contract 0.1.1 attaches a detail of its own to the attempt
/// (`report.detail`), kept in the history beside the receiver's answer and shown by the API and
/// the CLI. (Plugins of 0.1.0, such as `webhook_batch`, still load: see `plugin_cli`.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plugin_attaches_its_own_detail_to_the_attempt() {
    let mut host = Host::new();
    host.add_target(
        "detailed",
        &Target::misbehave("detail").config("detail", "stage=charge ref=42\nsecond line"),
    );
    host.start().await;

    let id = host.enqueue("order.created", json!({"order_id": 26})).await;
    let event = host.wait_settled(&id, &["detailed"]).await;
    let d = delivery(&event, "detailed");
    assert_eq!(d["status"], "dead", "{d:#}");
    let hist = history(&event, "detailed");
    assert_eq!(hist.len(), 1, "{d:#}");
    assert_eq!(hist[0]["detail"], "stage=charge ref=42\nsecond line", "{d:#}");
    assert!(hist[0]["response"].is_null(), "it sent no request: {d:#}");

    let out = host.run_cli(&["status", &id]).await;
    assert!(out.status.success(), "{out}");
    assert!(
        out.stdout.contains("detail: stage=charge ref=42\\nsecond line"),
        "one line, the break escaped:\n{out}"
    );
}
