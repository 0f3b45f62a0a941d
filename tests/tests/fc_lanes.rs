//! Failure classes, one lane at a time: a hung slow target does not slow a critical one;
//! batched delivery settles each event by its own result; per-key FIFO for `ordered`
//! targets; the circuit breaker opens, burns no attempts while cooling down, probes and
//! announces recovery; a manual pause holds deliveries until resumed.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use testkit::{
    Behavior, Host, Receiver, RecordedRequest, Reply, Target, default_timeout, history, scaled, target_count,
    target_entry,
};

/// Waits until the receiver has seen every key in `keys` at `path`; returns how long it took
/// from `since`.
async fn time_until_all_seen(rx: &Receiver, path: &str, keys: &BTreeSet<String>, since: Instant) -> Duration {
    let reqs = rx
        .wait_until(default_timeout(), |reqs| {
            let seen: BTreeSet<&str> = reqs
                .iter()
                .filter(|r| r.path == path && r.succeeded())
                .filter_map(|r| r.idempotency_key())
                .collect();
            keys.iter().all(|k| seen.contains(k.as_str()))
        })
        .await
        .unwrap_or_else(|e| panic!("{path}: {e}"));
    let last = reqs
        .iter()
        .filter(|r| r.path == path && r.idempotency_key().is_some_and(|k| keys.contains(k)))
        .map(|r| r.received_at)
        .max()
        .expect("some request");
    last.saturating_duration_since(since)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hung_slow_target_does_not_delay_a_critical_one() {
    let rx = Receiver::builder()
        .path("/critical", Behavior::ok())
        .path("/slow", Behavior::ok().hang())
        .start()
        .await;
    let mut host = Host::new();
    // A shared pool as small as the slow target's concurrency: were slow attempts to take
    // pool slots, its hung requests would starve every other target.
    host.set_config("max_in_flight", 4);
    host.add_target(
        "critical",
        &Target::webhook(&rx.url("/critical"))
            .events(&["order.*", "warmup.*", "base.*"])
            .concurrency(4)
            .timeout_ms(5_000)
            .fast_retry(5),
    )
    .add_target(
        "slow",
        &Target::webhook(&rx.url("/slow"))
            .class("slow")
            .events(&["order.*"])
            .concurrency(4)
            // Far longer than this test: the hung attempts stay in flight throughout.
            .timeout_ms(120_000)
            .fast_retry(3),
    );
    host.start().await;

    let id = host.enqueue("warmup.done", json!({})).await;
    host.wait_delivered(&id, &["critical"]).await;

    let keys = |ids: &[String]| -> BTreeSet<String> { ids.iter().map(|id| format!("{id}.critical")).collect() };
    let events = |ty: &str| -> Vec<Value> { (0..50).map(|i| json!({"type": ty, "payload": {"n": i}})).collect() };

    // Baseline: 50 events to the critical target alone.
    let t0 = Instant::now();
    let base_ids = host.enqueue_batch(events("base.created")).await;
    let baseline = time_until_all_seen(&rx, "/critical", &keys(&base_ids), t0).await;

    // The same with the slow target subscribed and hung.
    let t1 = Instant::now();
    let ids = host.enqueue_batch(events("order.created")).await;
    let with_slow = time_until_all_seen(&rx, "/critical", &keys(&ids), t1).await;
    eprintln!("critical latency for 50 events: baseline {baseline:?}, beside a hung slow target {with_slow:?}");

    // The slow target really was stuck meanwhile: its concurrency's worth of requests hang.
    rx.wait_for("/slow", 4, default_timeout())
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let targets = host
        .wait_for_targets(default_timeout(), |ts| target_count(ts, "critical", "delivered") == 101)
        .await;
    assert_eq!(target_count(&targets, "slow", "delivered"), 0, "{targets:#}");
    assert_eq!(target_count(&targets, "slow", "in_flight"), 4, "{targets:#}");
    assert_eq!(target_count(&targets, "slow", "pending"), 46, "{targets:#}");
    assert_eq!(
        rx.count_at("/slow"),
        4,
        "no more than its concurrency:\n{}",
        rx.describe()
    );

    let bound = (baseline * 3 + scaled(Duration::from_secs(3))).min(scaled(Duration::from_secs(20)));
    assert!(
        with_slow <= bound,
        "critical deliveries slowed down beside a hung slow target: {with_slow:?} vs baseline {baseline:?} (bound {bound:?})"
    );
}

/// Per request at `/batch`: (key, n, attempt) of each event, in order.
fn batch_items(r: &RecordedRequest) -> Vec<(String, u64, u64)> {
    let body = r.json();
    body["events"]
        .as_array()
        .unwrap_or_else(|| panic!("a batch request without `events`: {r}"))
        .iter()
        .map(|e| {
            (
                e["idempotency_key"].as_str().expect("idempotency_key").to_owned(),
                e["data"]["n"].as_u64().expect("data.n"),
                e["attempt"].as_u64().expect("attempt"),
            )
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batched_delivery_groups_events_and_retries_only_the_failed_one() {
    const EVENTS: u64 = 25;
    const FAILING: u64 = 7;
    let failed_once = Arc::new(Mutex::new(false));
    let flag = Arc::clone(&failed_once);
    let rx = Receiver::builder()
        .path(
            "/batch",
            Behavior::ok().respond_with(move |r| {
                let body = r.json();
                let mut failed = flag.lock().unwrap();
                let results: Vec<Value> = body["events"]
                    .as_array()
                    .map(|evs| {
                        evs.iter()
                            .map(|e| {
                                if e["data"]["n"] == FAILING && !*failed {
                                    *failed = true;
                                    json!({"status": 500, "error": "try again"})
                                } else {
                                    json!({"status": 200})
                                }
                            })
                            .collect()
                    })
                    .unwrap_or_default();
                (200, json!({ "results": results }).to_string())
            }),
        )
        .start()
        .await;
    let mut host = Host::new();
    host.add_target(
        "batch",
        &Target::webhook_batch(&rx.url("/batch")).batch(10, 300).fast_retry(5),
    );
    host.start().await;
    let targets = host.targets().await;
    assert_eq!(target_entry(&targets, "batch")["class"], "batched", "{targets:#}");

    let mut ids = Vec::new();
    for n in 0..EVENTS {
        ids.push(host.enqueue("order.created", json!({"n": n})).await);
    }
    host.wait_for_targets(default_timeout(), |ts| target_count(ts, "batch", "delivered") == EVENTS)
        .await;

    let reqs = rx.requests_at("/batch");
    let batches: Vec<Vec<(String, u64, u64)>> = reqs.iter().map(batch_items).collect();
    let shape: Vec<usize> = batches.iter().map(Vec::len).collect();
    eprintln!("batch sizes: {shape:?}");
    for (r, b) in reqs.iter().zip(&batches) {
        assert!(!b.is_empty() && b.len() <= 10, "batches hold 1..=10 events: {shape:?}");
        assert_eq!(
            r.header("outboxd-batch-size"),
            Some(b.len().to_string().as_str()),
            "{r}"
        );
    }
    let first_attempt_requests = batches.iter().filter(|b| b.iter().any(|e| e.2 == 1)).count();
    assert!(
        first_attempt_requests <= 10,
        "25 events should travel in a few batches, not one request each: {shape:?}"
    );
    assert!(
        shape.iter().any(|&s| s >= 3),
        "some batch holds several events: {shape:?}"
    );

    // Every event arrived; only the failed one arrived twice, in a later request.
    let mut seen: BTreeMap<u64, Vec<(usize, u64)>> = BTreeMap::new();
    for (i, b) in batches.iter().enumerate() {
        for (_, n, attempt) in b {
            seen.entry(*n).or_default().push((i, *attempt));
        }
    }
    assert_eq!(seen.len(), EVENTS as usize, "every event was sent: {seen:?}");
    for (n, sightings) in &seen {
        if *n == FAILING {
            assert_eq!(sightings.len(), 2, "the failed event is sent again: {sightings:?}");
            let (first, second) = (sightings[0], sightings[1]);
            assert!(second.0 > first.0, "its retry is a later request: {sightings:?}");
            assert_eq!((first.1, second.1), (1, 2), "attempts 1 then 2: {sightings:?}");
            let mates = batches[first.0].len();
            assert!(
                mates > 1 || shape.iter().all(|&s| s == 1),
                "(the failing event shared its batch: {mates} events)"
            );
        } else {
            assert_eq!(
                sightings.len(),
                1,
                "event {n} was sent once, its batch mate's failure notwithstanding: {sightings:?}"
            );
        }
    }
    let failing_id = &ids[FAILING as usize];
    let ev = host.get_event(failing_id).await;
    let outcomes: Vec<String> = history(&ev, "batch")
        .iter()
        .filter_map(|h| h["outcome"].as_str().map(str::to_owned))
        .collect();
    assert_eq!(outcomes, ["retry", "delivered"], "{ev:#}");
    let err = history(&ev, "batch")[0]["error"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    assert!(
        err.contains("500") && err.contains("try again"),
        "the per-event reason is kept: {err}"
    );
    let mate = batches
        .iter()
        .find(|b| b.iter().any(|e| e.1 == FAILING && e.2 == 1))
        .and_then(|b| b.iter().find(|e| e.1 != FAILING))
        .map(|e| ids[e.1 as usize].clone());
    if let Some(mate) = mate {
        let ev = host.get_event(&mate).await;
        let outcomes: Vec<String> = history(&ev, "batch")
            .iter()
            .filter_map(|h| h["outcome"].as_str().map(str::to_owned))
            .collect();
        assert_eq!(outcomes, ["delivered"], "a batch mate is delivered once: {ev:#}");
    }
}

/// `data.name` of a webhook request.
fn name_of(r: &RecordedRequest) -> String {
    r.json()["data"]["name"].as_str().unwrap_or_default().to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ordered_target_holds_a_key_behind_its_failing_head_but_not_other_keys() {
    let a1_failures = Arc::new(Mutex::new(0u32));
    let counter = Arc::clone(&a1_failures);
    let rx = Receiver::builder()
        .path(
            "/ordered",
            Behavior::ok().respond_with(move |r| {
                let mut failures = counter.lock().unwrap();
                if name_of(r) == "A1" && *failures < 3 {
                    *failures += 1;
                    (500, json!({"error": "A1 not yet"}).to_string())
                } else {
                    (200, "{}".to_owned())
                }
            }),
        )
        .start()
        .await;
    let mut host = Host::new();
    // Critical's equal jitter: A1's three retries take at least 150 + 300 + 500 ms.
    host.add_target(
        "ordered",
        &Target::webhook(&rx.url("/ordered"))
            .ordered(true)
            .concurrency(4)
            .retry(10, 300, 1_000),
    );
    host.start().await;

    let events: Vec<Value> = [("A1", "A"), ("A2", "A"), ("A3", "A"), ("B1", "B"), ("B2", "B")]
        .iter()
        .map(|(name, key)| json!({"type": "order.updated", "payload": {"name": name}, "ordering_key": key}))
        .collect();
    let ids = host.enqueue_batch(events).await;
    for id in &ids {
        host.wait_delivered(id, &["ordered"]).await;
    }

    let reqs = rx.requests_at("/ordered");
    let by_name = |name: &str| -> Vec<&RecordedRequest> { reqs.iter().filter(|r| name_of(r) == name).collect() };
    let success = |name: &str| -> usize {
        by_name(name)
            .iter()
            .find(|r| r.succeeded())
            .map(|r| r.seq)
            .unwrap_or_else(|| panic!("{name} never succeeded:\n{}", rx.describe()))
    };
    let a1 = by_name("A1");
    assert_eq!(a1.len(), 4, "A1 fails three times, then succeeds:\n{}", rx.describe());
    let a1_ok = success("A1");
    let a2_ok = success("A2");
    for r in by_name("A2") {
        assert!(r.seq > a1_ok, "A2 was sent before A1 succeeded:\n{}", rx.describe());
    }
    for r in by_name("A3") {
        assert!(r.seq > a2_ok, "A3 was sent before A2 succeeded:\n{}", rx.describe());
    }
    let (b1_ok, b2_ok) = (success("B1"), success("B2"));
    assert!(
        b1_ok < a1_ok && b2_ok < a1_ok,
        "B1 and B2 were held behind key A:\n{}",
        rx.describe()
    );
    for r in by_name("B2") {
        assert!(r.seq > b1_ok, "B2 was sent before B1 succeeded:\n{}", rx.describe());
    }
    assert_eq!(
        by_name("A2").len() + by_name("A3").len() + by_name("B1").len() + by_name("B2").len(),
        4
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_breaker_opens_rests_probes_and_announces_recovery() {
    const COOLDOWN: Duration = Duration::from_millis(1_000);
    // Lower bound on the gap between attempts while the breaker is open (timer slack).
    const REST: Duration = Duration::from_millis(900);
    let rx = Receiver::builder().path("/main", Behavior::status(500)).start().await;
    let mut host = Host::new();
    host.add_target(
        "main",
        &Target::webhook(&rx.url("/main"))
            .events(&["order.*"])
            .concurrency(1)
            .retry(30, 50, 100)
            .breaker(3, COOLDOWN.as_millis() as u64),
    )
    .add_target(
        "alerts",
        &Target::webhook(&rx.url("/alerts")).events(&["outboxd.*"]).fast_retry(5),
    );
    host.start().await;

    let mut ids = Vec::new();
    for n in 0..5 {
        ids.push(host.enqueue("order.created", json!({"n": n})).await);
    }
    let targets = host
        .wait_for_targets(default_timeout(), |ts| {
            target_entry(ts, "main")["breaker"]["state"] == "open"
        })
        .await;
    let seen_open = Instant::now();
    let breaker = &target_entry(&targets, "main")["breaker"];
    assert!(
        breaker["consecutive_failures"].as_u64().is_some_and(|n| n >= 3),
        "{breaker}"
    );
    let fails = rx.requests_at("/main");
    let last_fail = fails.last().expect("failed requests").received_at;
    if fails.len() == 3 {
        assert_eq!(breaker["consecutive_failures"], 3, "{breaker}");
    }
    // While it cools down, nothing reaches the receiver. (A window inside the host's own 1 s
    // cool-down, judged by the requests' arrival times: a slow machine does not stretch it, and
    // a longer one would take in the probe, so it is not scaled.)
    let quiet_until = (last_fail + REST).min(seen_open + Duration::from_millis(600));
    tokio::time::sleep_until(tokio::time::Instant::from_std(quiet_until)).await;
    let during = rx
        .requests_at("/main")
        .iter()
        .filter(|r| r.received_at <= quiet_until)
        .count();
    assert_eq!(during, fails.len(), "attempts during the cool-down:\n{}", rx.describe());

    // The receiver heals: a probe succeeds, the breaker closes, the rest flows.
    rx.behave("/main", Behavior::ok());
    for id in &ids {
        host.wait_delivered(id, &["main"]).await;
    }
    let targets = host
        .wait_for_targets(default_timeout(), |ts| {
            target_entry(ts, "main")["breaker"]["state"] == "closed"
        })
        .await;
    assert_eq!(
        target_entry(&targets, "main")["breaker"]["consecutive_failures"],
        0,
        "{targets:#}"
    );

    let reqs = rx.requests_at("/main");
    let first_ok = reqs
        .iter()
        .position(|r| r.reply == Reply::Status(200))
        .expect("a success");
    assert!(first_ok >= 3, "three failures come first:\n{}", rx.describe());
    for w in 3..=first_ok {
        let gap = reqs[w].received_at - reqs[w - 1].received_at;
        assert!(
            gap >= REST,
            "request {w} came {gap:?} after the previous failure, within the {COOLDOWN:?} cool-down:\n{}",
            rx.describe()
        );
    }
    assert_eq!(
        reqs.len(),
        first_ok + ids.len(),
        "after the probe each event is sent once"
    );

    // The recovery is announced to the `outboxd.*` subscriber.
    let alerts = rx
        .wait_for("/alerts", 1, default_timeout())
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let recovered: Vec<Value> = alerts
        .iter()
        .map(RecordedRequest::json)
        .filter(|b| b["type"] == "outboxd.target.recovered")
        .collect();
    assert_eq!(recovered.len(), 1, "one recovery announcement:\n{}", rx.describe());
    assert_eq!(recovered[0]["data"]["target"], "main", "{}", recovered[0]);
    assert!(
        recovered[0]["data"]["failures"].as_u64().is_some_and(|n| n >= 3),
        "{}",
        recovered[0]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paused_target_holds_its_deliveries_until_resumed() {
    let rx = Receiver::start().await;
    let mut host = Host::new();
    host.add_target("crm", &Target::webhook(&rx.url("/crm")).fast_retry(5))
        .add_target("billing", &Target::webhook(&rx.url("/billing")).fast_retry(5));
    host.start().await;
    let quiet = Duration::from_millis(800);

    let (status, body) = host.post_json("/v1/targets/crm/pause", &json!({})).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        (body["paused"].clone(), body["changed"].clone()),
        (json!(true), json!(true)),
        "{body}"
    );
    let (_, again) = host.post_json("/v1/targets/crm/pause", &json!({})).await;
    assert_eq!(again["changed"], false, "pausing twice changes nothing: {again}");
    assert_eq!(target_entry(&host.targets().await, "crm")["paused"], true);

    let mut ids = Vec::new();
    for n in 0..5 {
        ids.push(host.enqueue("order.created", json!({"n": n})).await);
    }
    for id in &ids {
        host.wait_delivered(id, &["billing"]).await;
    }
    // A paused target gets no requests.
    rx.expect_no_more_at("/crm", 0, quiet).await;
    let targets = host.targets().await;
    assert_eq!(target_count(&targets, "crm", "pending"), 5, "{targets:#}");
    assert_eq!(target_count(&targets, "crm", "in_flight"), 0, "{targets:#}");
    let ev = host.get_event(&ids[0]).await;
    assert_eq!(
        testkit::delivery(&ev, "crm")["attempts"],
        0,
        "no attempt was burned: {ev:#}"
    );

    let (status, body) = host.post_json("/v1/targets/crm/resume", &json!({})).await;
    assert_eq!((status, body["changed"].clone()), (200, json!(true)), "{body}");
    for id in &ids {
        host.wait_delivered(id, &["crm"]).await;
    }
    assert_eq!(target_entry(&host.targets().await, "crm")["paused"], false);

    // The same from the command line, beside the running service.
    let out = host.run_cli(&["target", "pause", "crm"]).await;
    assert!(out.status.success() && out.stdout.contains("paused"), "{out}");
    assert_eq!(target_entry(&host.targets().await, "crm")["paused"], true);
    let late = host.enqueue("order.created", json!({"n": 99})).await;
    host.wait_delivered(&late, &["billing"]).await;
    // Paused from the CLI.
    rx.expect_no_more_at("/crm", 5, quiet).await;
    let out = host.run_cli(&["target", "resume", "crm"]).await;
    assert!(out.status.success() && out.stdout.contains("resumed"), "{out}");
    host.wait_delivered(&late, &["crm"]).await;
    assert_eq!(rx.idempotency_keys_at("/crm").len(), 6);
    assert_eq!(rx.count_at("/crm"), 6, "{}", rx.describe());
}
