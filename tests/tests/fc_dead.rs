//! Dead letters: 10,000 dead deliveries replayed by `outboxd dead replay` (a replay job the
//! CLI works while `serve` runs: progress lines, each key exactly once, replaying twice does
//! nothing); the
//! failed-delivery listing's filters and paging; `outboxd.delivery.dead` reaching a
//! subscriber of `outboxd.*`; a replay through the API.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde_json::{Value, json};
use testkit::{Behavior, Host, Receiver, Target, default_timeout, target_count};

/// Dead deliveries in the bulk test.
const BULK: usize = 10_000;
/// Events per `POST /v1/events` in the bulk test.
const POST_CHUNK: usize = 1_000;

fn now_ms() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_millis()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_dead_deliveries_replayed_by_the_cli_arrive_exactly_once() {
    let rx = Receiver::builder().path("/bulk", Behavior::status(400)).start().await;
    let mut host = Host::new();
    host.add_target("bulk", &Target::webhook(&rx.url("/bulk")).concurrency(16).fast_retry(5));
    host.start().await;

    // 10,000 events, in batches of 1,000: each delivery dies at its first attempt (400).
    let started = Instant::now();
    let mut ids = Vec::with_capacity(BULK);
    for chunk in 0..BULK / POST_CHUNK {
        let batch: Vec<Value> = (0..POST_CHUNK)
            .map(|i| json!({"type": "order.created", "payload": {"n": chunk * POST_CHUNK + i}}))
            .collect();
        ids.extend(host.enqueue_batch(batch).await);
    }
    let expected_keys: BTreeSet<String> = ids.iter().map(|id| format!("{id}.bulk")).collect();
    assert_eq!(expected_keys.len(), BULK, "event ids are unique");

    let long = default_timeout() * 6;
    host.wait_for_targets(long, |ts| target_count(ts, "bulk", "dead") == BULK as u64)
        .await;
    eprintln!("{BULK} deliveries dead after {:?}", started.elapsed());
    let first_round = rx.requests_at("/bulk");
    assert_eq!(
        first_round.len(),
        BULK,
        "each delivery dies after exactly one attempt (a 400 is permanent)"
    );
    let seen: BTreeSet<String> = first_round
        .iter()
        .filter_map(|r| r.idempotency_key().map(str::to_owned))
        .collect();
    assert_eq!(seen, expected_keys, "the receiver saw every delivery's key once");

    // The listing: filtered by error text and target, paged.
    let (page, next_after) = failed(&host, "target=bulk&status=dead&error=http%20400&limit=1000").await;
    assert_eq!(page.len(), 1000, "a full page");
    assert!(next_after.is_i64(), "a full page has a next_after: {next_after}");
    for d in &page {
        assert_eq!(d["target"], "bulk", "{d}");
        assert_eq!(d["status"], "dead", "{d}");
        assert_eq!(d["attempts"], 1, "{d}");
        let err = d["last_error"].as_str().unwrap_or_default();
        assert!(err.contains("400"), "last_error mentions the 400: {d}");
    }
    let (next, _) = failed(
        &host,
        &format!("target=bulk&error=HTTP%20400&limit=1000&after={next_after}"),
    )
    .await;
    assert_eq!(next.len(), 1000, "the second page");
    let first_ids: BTreeSet<i64> = page.iter().filter_map(|d| d["delivery_id"].as_i64()).collect();
    assert!(
        next.iter()
            .all(|d| d["delivery_id"].as_i64().is_some_and(|id| !first_ids.contains(&id))),
        "pages do not overlap"
    );
    let (none, _) = failed(&host, "target=bulk&error=timeout").await;
    assert!(none.is_empty(), "no bulk delivery failed by a timeout: {none:?}");

    // The receiver heals; replay with the CLI while serve runs.
    rx.behave("/bulk", Behavior::ok());
    let mark = rx.total();
    let replay_started = Instant::now();
    let out = host.run_cli(&["dead", "replay", "--target", "bulk"]).await;
    assert!(out.status.success(), "outboxd dead replay failed:\n{out}");
    let progress: Vec<&str> = out
        .stderr
        .lines()
        .filter(|l| l.trim_start().starts_with("replayed "))
        .collect();
    assert!(progress.len() >= 2, "the replay shows progress, line by line:\n{out}");
    assert_eq!(
        progress.last().map(|l| l.trim()),
        Some(format!("replayed {BULK}/{BULK}").as_str()),
        "the last progress line counts everything:\n{out}"
    );
    assert!(
        progress.iter().all(|l| l.trim().ends_with(&format!("/{BULK}"))),
        "every progress line shows the total:\n{out}"
    );
    assert!(
        out.stdout
            .contains(&format!("done: replayed {BULK} of {BULK} deliveries")),
        "the summary names the count:\n{out}"
    );

    host.wait_for_targets(long, |ts| target_count(ts, "bulk", "delivered") == BULK as u64)
        .await;
    eprintln!("replayed and delivered in {:?}", replay_started.elapsed());
    let targets = host.targets().await;
    assert_eq!(target_count(&targets, "bulk", "dead"), 0, "{targets:#}");
    assert_eq!(target_count(&targets, "bulk", "pending"), 0, "{targets:#}");
    assert_eq!(target_count(&targets, "bulk", "in_flight"), 0, "{targets:#}");

    let after: Vec<_> = rx.requests().into_iter().skip(mark).collect();
    let mut per_key: BTreeMap<String, usize> = BTreeMap::new();
    for r in &after {
        let key = r
            .idempotency_key()
            .unwrap_or_else(|| panic!("request without an idempotency key: {r}"));
        *per_key.entry(key.to_owned()).or_default() += 1;
    }
    let dupes: Vec<_> = per_key.iter().filter(|(_, n)| **n > 1).take(5).collect();
    assert!(
        dupes.is_empty(),
        "keys delivered more than once after the replay: {dupes:?}"
    );
    let replayed: BTreeSet<String> = per_key.into_keys().collect();
    assert_eq!(replayed.len(), BULK, "every replayed key arrived");
    assert_eq!(replayed, expected_keys, "exactly the dead deliveries' keys arrived");

    // A replayed delivery starts its attempt count again and keeps its history.
    let ev = host.get_event(&ids[0]).await;
    let d = testkit::delivery(&ev, "bulk");
    assert_eq!(d["status"], "delivered", "{d:#}");
    assert_eq!(d["attempts"], 1, "the retry budget starts again: {d:#}");
    let outcomes: Vec<&str> = d["history"]
        .as_array()
        .map(|h| h.iter().filter_map(|a| a["outcome"].as_str()).collect())
        .unwrap_or_default();
    assert_eq!(outcomes, ["permanent", "delivered"], "{d:#}");

    // Replaying again replays nothing.
    let out = host.run_cli(&["dead", "replay", "--target", "bulk"]).await;
    assert!(out.status.success(), "second replay failed:\n{out}");
    assert!(
        out.stderr.contains("replayed 0/0") && out.stdout.contains("done: replayed 0 of 0"),
        "a second replay finds nothing:\n{out}"
    );
    let job = host.replay_job(&json!({"target": "bulk"})).await;
    assert_eq!(
        (&job["status"], &job["total"], &job["replayed"]),
        (&json!("done"), &json!(0), &json!(0)),
        "{job}"
    );
    // No further requests after replaying nothing.
    rx.expect_no_more(mark + BULK, Duration::from_millis(500)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_critical_deliveries_are_listed_announced_and_replayable() {
    let rx = Receiver::builder()
        .path("/billing", Behavior::status(400))
        .path("/ledger", Behavior::status(503))
        .path("/metrics", Behavior::status(400))
        .start()
        .await;
    let mut host = Host::new();
    host.add_target("billing", &Target::webhook(&rx.url("/billing")).fast_retry(5))
        // Without its breaker, whose 30 s cool-down would hold the ten failing attempts.
        .add_target(
            "ledger",
            &Target::webhook(&rx.url("/ledger")).fast_retry(2).breaker(0, 1_000),
        )
        .add_target(
            "metrics",
            &Target::webhook(&rx.url("/metrics")).class("best-effort").fast_retry(2),
        )
        .add_target(
            "alerts",
            &Target::webhook(&rx.url("/alerts")).events(&["outboxd.*"]).fast_retry(5),
        );
    host.start().await;

    let before = now_ms();
    let mut ids = Vec::new();
    for i in 0..3 {
        ids.push(host.enqueue("order.created", json!({"n": i})).await);
    }
    for i in 0..2 {
        ids.push(host.enqueue("invoice.paid", json!({"n": i})).await);
    }
    for id in &ids {
        host.wait_settled(id, &["billing", "ledger"]).await;
        host.wait_for(id, default_timeout(), |ev| {
            testkit::status_of(ev, "metrics") == Some("discarded")
        })
        .await;
    }

    // Filters: by error text (case-insensitive), target, type glob, status, time.
    let (rejected, _) = failed(&host, "error=http%20400&status=dead").await;
    let targets: BTreeSet<&str> = rejected.iter().filter_map(|d| d["target"].as_str()).collect();
    assert_eq!(rejected.len(), 5, "billing's five 400s: {rejected:#?}");
    assert_eq!(targets, BTreeSet::from(["billing"]));
    let (gave_up, _) = failed(&host, "error=GAVE%20UP").await;
    assert_eq!(gave_up.len(), 5, "ledger ran out of attempts five times: {gave_up:#?}");
    for d in &gave_up {
        assert_eq!(d["target"], "ledger", "{d}");
        assert_eq!(d["attempts"], 2, "{d}");
        assert!(d["last_error"].as_str().unwrap_or_default().contains("503"), "{d}");
    }
    let (invoices, _) = failed(&host, "target=billing&event_type=invoice.*").await;
    assert_eq!(invoices.len(), 2, "{invoices:#?}");
    assert!(invoices.iter().all(|d| d["event_type"] == "invoice.paid"));
    let (discarded, _) = failed(&host, "status=discarded").await;
    assert_eq!(discarded.len(), 5, "best-effort failures are discarded: {discarded:#?}");
    assert!(discarded.iter().all(|d| d["target"] == "metrics"));
    let (all, _) = failed(&host, &format!("since={before}")).await;
    assert_eq!(all.len(), 15, "everything failed after `before`");
    let (earlier, _) = failed(&host, &format!("until={before}")).await;
    assert!(earlier.is_empty(), "nothing failed before `before`: {earlier:#?}");
    let (page, next_after) = failed(&host, "limit=4").await;
    assert_eq!(page.len(), 4);
    let (rest, end) = failed(&host, &format!("after={next_after}")).await;
    assert_eq!(rest.len(), 11, "the rest after the first page");
    assert!(end.is_null(), "the last page has no next_after: {end}");
    let (status, body) = host.get_json("/v1/deliveries/failed?status=pending").await;
    assert_eq!(status, 400, "only dead or discarded can be listed: {body}");
    // The CLI lists the same, beside the running service.
    let out = host
        .run_cli(&[
            "dead", "list", "--target", "billing", "--error", "http 400", "--type", "order.*",
        ])
        .await;
    assert!(out.status.success(), "{out}");
    let listed: Vec<&str> = out.stdout.lines().skip(1).filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(listed.len(), 3, "billing's three order.created deliveries:\n{out}");
    assert!(
        listed.iter().all(|l| l.contains("billing") && l.contains("dead")),
        "{out}"
    );

    // Every dead critical delivery is announced once to the `outboxd.*` subscriber; the
    // discarded best-effort ones are not.
    let alerts = rx.expect_requests("/alerts", 10).await;
    // One announcement per dead delivery.
    rx.expect_no_more_at("/alerts", 10, Duration::from_millis(500)).await;
    let mut announced = BTreeSet::new();
    for r in &alerts {
        let body = r.json();
        assert_eq!(body["type"], "outboxd.delivery.dead", "{r}");
        let data = &body["data"];
        let target = data["target"].as_str().unwrap_or_default().to_owned();
        let event_id = data["event_id"].as_str().unwrap_or_default().to_owned();
        assert!(ids.contains(&event_id), "announces one of our events: {data}");
        assert_eq!(
            data["idempotency_key"].as_str(),
            Some(format!("{event_id}.{target}").as_str()),
            "{data}"
        );
        let err = data["last_error"].as_str().unwrap_or_default();
        match target.as_str() {
            "billing" => assert!(err.contains("400"), "{data}"),
            "ledger" => assert!(err.contains("503") && data["attempts"] == 2, "{data}"),
            other => panic!("a dead delivery of {other} announced: {data}"),
        }
        announced.insert((target, event_id));
    }
    assert_eq!(announced.len(), 10, "ten distinct dead deliveries announced");

    // Replay through the API, filtered by error text: only billing's come back.
    rx.behave("/billing", Behavior::ok());
    let job = host.replay_job(&json!({"error": "HTTP 400", "status": "dead"})).await;
    assert_eq!(
        (&job["status"], &job["total"], &job["replayed"], &job["skipped"]),
        (&json!("done"), &json!(5), &json!(5), &json!(0)),
        "{job}"
    );
    assert_eq!(
        job["filter"],
        json!({"status": "dead", "error": "HTTP 400"}),
        "the job names its filter: {job}"
    );
    for id in &ids {
        let ev = host.wait_settled(id, &["billing"]).await;
        assert_eq!(testkit::status_of(&ev, "billing"), Some("delivered"), "{ev:#}");
        assert_eq!(testkit::status_of(&ev, "ledger"), Some("dead"), "{ev:#}");
    }
    let job = host.replay_job(&json!({"error": "HTTP 400", "status": "dead"})).await;
    assert_eq!(
        (&job["status"], &job["total"], &job["replayed"]),
        (&json!("done"), &json!(0), &json!(0)),
        "nothing is left to replay: {job}"
    );
}

/// `GET /v1/deliveries/failed?<query>`, asserting 200; returns (deliveries, next_after).
async fn failed(host: &Host, query: &str) -> (Vec<Value>, Value) {
    let (status, body) = host.get_json(&format!("/v1/deliveries/failed?{query}")).await;
    assert_eq!(status, 200, "GET /v1/deliveries/failed?{query}: {body}");
    let list = body["deliveries"]
        .as_array()
        .unwrap_or_else(|| panic!("no deliveries list: {body}"))
        .clone();
    (list, body["next_after"].clone())
}
