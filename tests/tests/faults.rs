//! Under faults and abuse: a breaker that keeps flaky targets flowing (and stops a dead one),
//! a receiver's `Retry-After` as backpressure, bounded plugin logs and error texts, a start
//! that survives a broken file, retention of finished events, and JSON refusals everywhere.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use testkit::{
    Behavior, Host, Receiver, RecordedRequest, Reply, StartError, Target, concurrency_limit, default_timeout, delivery,
    eventually_within, scaled, target_count, target_entry,
};

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name).ok().and_then(|s| s.parse().ok()).unwrap_or(default)
}

/// 25 % failures at random: 20 % HTTP 500, 5 % HTTP 429 with `Retry-After: 1`, 3 % hanging
/// past the target's 2 s timeout (the rules apply in order, each to what is left).
fn flaky(seed: u64) -> Behavior {
    Behavior::ok()
        .hang_fraction(0.03)
        .retry_after_fraction(0.05 / 0.97, 429, 1)
        .fail_fraction(0.20 / (0.97 * (1.0 - 0.05 / 0.97)), 500)
        .seed(seed)
}

async fn post_all(addr: Arc<Mutex<Option<SocketAddr>>>, n: usize) {
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .expect("HTTP client");
    let mut i = 0;
    while i < n {
        let chunk: Vec<Value> = (i..(i + 100).min(n))
            .map(|k| json!({"type": "order.created", "payload": {"n": k}, "idempotency_key": format!("flaky-{k}")}))
            .collect();
        let current = *addr.lock().unwrap();
        if let Some(a) = current
            && let Ok(resp) = client.post(format!("http://{a}/v1/events")).json(&chunk).send().await
            && matches!(resp.status().as_u16(), 200 | 202)
        {
            i += chunk.len();
            continue;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The scenario, scaled by `OUTBOXD_FLAKY_EVENTS` (default 300; the is
/// 10000) and `OUTBOXD_FLAKY_KILLS` (default 3; the is 20): two critical targets and
/// a best-effort one on a 25 %-failing receiver, concurrency 16, kill -9s along the way; and
/// a target whose receiver fails every request. Everything arrives, the flaky targets'
/// breakers never open, the dead target's opens within 5 s and then sees at most one probe
/// per cool-down. The time it took is printed (timing goals are for the scenario report).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flaky_targets_keep_flowing_and_a_dead_one_gets_a_probe_per_cooldown() {
    const COOLDOWN: Duration = Duration::from_millis(3_000);
    let n = env_usize("OUTBOXD_FLAKY_EVENTS", 300);
    let kills = env_usize("OUTBOXD_FLAKY_KILLS", 3);
    let rx = Receiver::builder()
        .path("/c1", flaky(1))
        .path("/c2", flaky(2))
        .path("/be", flaky(3))
        .path("/dead", Behavior::status(500))
        .keep_requests(true)
        .start()
        .await;
    let mut host = Host::new();
    // What a `Retry-After` pauses: the manifests say nothing by default, so the target's
    // default applies (`delivery` with the adaptive limit); `OUTBOXD_FLAKY_RETRY_AFTER=target`
    // or `delivery` forces one.
    let retry_after = std::env::var("OUTBOXD_FLAKY_RETRY_AFTER")
        .ok()
        .filter(|s| !s.is_empty());
    for (name, class) in [("c1", "critical"), ("c2", "critical"), ("be", "best-effort")] {
        let mut t = Target::webhook(&rx.url(&format!("/{name}")))
            .events(&["order.*"])
            .class(class)
            .concurrency(16)
            .timeout_ms(2_000);
        if let Some(what) = &retry_after {
            t = t.breaker_retry_after(what);
        }
        if class == "critical" {
            t = t.retry(100, 200, 2_000);
        }
        host.add_target(name, &t);
    }
    host.add_target(
        "dead",
        &Target::webhook(&rx.url("/dead"))
            .events(&["order.*"])
            .concurrency(16)
            .retry(1000, 50, 200)
            .breaker_cooldown_ms(COOLDOWN.as_millis() as u64),
    );
    host.start().await;

    let started = Instant::now();
    let mut last_start = started;
    let addr = Arc::new(Mutex::new(Some(host.addr())));
    let poster = tokio::spawn(post_all(Arc::clone(&addr), n));
    for _ in 0..kills {
        tokio::time::sleep(Duration::from_millis(700)).await;
        *addr.lock().unwrap() = None;
        host.kill_9().await;
        host.start().await;
        last_start = Instant::now();
        *addr.lock().unwrap() = Some(host.addr());
    }
    poster.await.expect("poster");
    let n64 = n as u64;
    // Each flaky target's concurrency limit at every poll, for the printout.
    let mut limits: [Vec<u64>; 3] = Default::default();
    let settled = |ts: &Value| {
        for (seen, name) in limits.iter_mut().zip(["c1", "c2", "be"]) {
            seen.extend(concurrency_limit(ts, name));
        }
        target_count(ts, "c1", "delivered") == n64
            && target_count(ts, "c2", "delivered") == n64
            && target_count(ts, "be", "delivered") + target_count(ts, "be", "discarded") == n64
    };
    let targets = host
        .wait_for_targets(scaled(Duration::from_secs(60 + n as u64 / 5)), settled)
        .await;
    let drained = started.elapsed();
    eprintln!(
        "{n} events, {kills} kills, retry_after = {}: drained in {drained:?}; best-effort discarded {}",
        retry_after.as_deref().unwrap_or("the default"),
        target_count(&targets, "be", "discarded")
    );

    let log = host.stderr();
    let openings: Vec<&str> = log.lines().filter(|l| l.contains("circuit breaker opened")).collect();
    for (name, seen) in ["c1", "c2", "be"].into_iter().zip(&mut limits) {
        seen.sort_unstable();
        let budget = &target_entry(&targets, name)["retry_budget"];
        eprintln!(
            "{name}: limit over the last drain min {:?}, median {:?}, at 1 in {} of {} polls; retry budget {budget}",
            seen.first(),
            seen.get(seen.len() / 2),
            seen.iter().filter(|l| **l == 1).count(),
            seen.len()
        );
        assert!(
            !openings.iter().any(|l| l.contains(&format!("target={name} "))),
            "the breaker of flaky target {name} opened:\n{}",
            openings.join("\n")
        );
        let reqs = rx.requests_at(&format!("/{name}"));
        let throttled = reqs
            .iter()
            .filter(|r| matches!(r.reply, Reply::RetryAfter { .. }))
            .count();
        eprintln!("/{name}: {} requests, {throttled} answered 429", reqs.len());
    }
    assert!(
        openings.iter().any(|l| l.contains("target=dead ")),
        "the dead target's breaker should open:\n{}",
        host.stderr_tail(30)
    );

    // The dead target, since the last start (a restart forgets the breaker): opened within
    // 5 s of its first request, then at most one probe per cool-down. Watched until two rests
    // have been seen (the breaker opened and probed), and at least three cool-downs and a
    // second after the last start.
    let since_start = |reqs: &[RecordedRequest]| -> Vec<RecordedRequest> {
        reqs.iter()
            .filter(|r| r.path == "/dead" && r.received_at >= last_start)
            .cloned()
            .collect()
    };
    let gaps_of = |reqs: &[RecordedRequest]| -> Vec<Duration> {
        reqs.windows(2).map(|w| w[1].received_at - w[0].received_at).collect()
    };
    rx.wait_until(scaled(3 * COOLDOWN + Duration::from_secs(10)), |all| {
        let rests = gaps_of(&since_start(all))
            .iter()
            .filter(|g| **g >= COOLDOWN.mul_f64(0.9))
            .count();
        rests >= 2
    })
    .await
    .unwrap_or_else(|e| panic!("the dead target's breaker did not open and probe twice: {e}"));
    let rest = last_start + 3 * COOLDOWN + Duration::from_secs(1);
    tokio::time::sleep_until(tokio::time::Instant::from_std(rest)).await;
    let reqs = since_start(&rx.requests());
    let gaps = gaps_of(&reqs);
    let burst = gaps
        .iter()
        .position(|g| *g >= COOLDOWN.mul_f64(0.9))
        .unwrap_or_else(|| panic!("the dead target never rested: {} requests, gaps {gaps:?}", reqs.len()));
    let opened_after = reqs[burst].received_at - reqs[0].received_at;
    assert!(
        opened_after < Duration::from_secs(5),
        "the dead target's breaker took {opened_after:?} to open"
    );
    let probes = &gaps[burst..];
    assert!(probes.len() >= 2, "probes after opening: {probes:?}");
    assert!(
        probes.iter().all(|g| *g >= COOLDOWN.mul_f64(0.9)),
        "one probe per cool-down at most: gaps {probes:?}"
    );
}

/// A plugin that logs 64 KiB lines in a loop leaves a bounded log per attempt, ending with a
/// summary line; a 1 MiB failure reason is stored capped; other targets are unaffected.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flooding_plugin_is_held_to_its_log_budget_and_errors_are_capped() {
    let rx = Receiver::start().await;
    let mut host = Host::new();
    host.add_target("flood", &Target::misbehave("flood").timeout_ms(1_500).retry(2, 50, 100))
        .add_target("shout", &Target::misbehave("shout").retry(1, 50, 100))
        .add_target("hook", &Target::webhook(&rx.url("/hook")));
    host.start().await;
    let before = host.stderr().len();

    let id = host.enqueue("order.created", json!({"n": 1})).await;
    let ev = host.wait_settled(&id, &["flood", "shout", "hook"]).await;
    assert_eq!(delivery(&ev, "hook")["status"], "delivered", "{ev:#}");
    assert_eq!(delivery(&ev, "flood")["attempts"], 2, "{ev:#}");

    let log = host.stderr();
    let grown = log.len() - before;
    eprintln!("the log grew {grown} bytes over 2 flood attempts");
    assert!(grown < 2 * 1024 * 1024, "the log grew {grown} bytes for 2 attempts");
    let flood_lines = log.lines().filter(|l| l.contains("flood line")).count();
    assert!(
        (1..=200).contains(&flood_lines),
        "{flood_lines} flood lines logged for 2 attempts"
    );
    let summaries: Vec<&str> = log.lines().filter(|l| l.contains("log budget:")).collect();
    assert_eq!(summaries.len(), 2, "one summary per attempt:\n{}", summaries.join("\n"));
    assert!(summaries[0].contains("suppressed"), "{}", summaries[0]);
    assert!(
        log.lines()
            .filter(|l| l.contains("flood line"))
            .all(|l| l.len() < 8 * 1024),
        "long lines are cut"
    );

    let shout = delivery(&ev, "shout");
    let last_error = shout["last_error"].as_str().expect("last_error");
    assert!(last_error.len() <= 4096, "{} bytes stored", last_error.len());
    assert!(
        last_error.contains("[cut from "),
        "{}",
        &last_error[last_error.len() - 60..]
    );
    let history_error = shout["history"][0]["error"].as_str().expect("history error");
    assert!(history_error.len() <= 4096);
}

/// A broken plugin file does not stop the start: healthy targets serve, the broken one's
/// events get deliveries held `paused` with the load error until a good file appears; a
/// manifest that does not parse routes nothing. `/healthz` says `degraded`. With
/// `strict_start` the host refuses to start instead.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_start_with_a_broken_plugin_serves_the_rest_and_holds_its_deliveries() {
    let rx = Receiver::start().await;
    let mut host = Host::new();
    host.add_target("hook", &Target::webhook(&rx.url("/hook")).events(&["order.*"]));
    let crm = Target::webhook(&rx.url("/crm")).events(&["order.*"]);
    let mut crm_manifest = crm.to_toml();
    crm_manifest = crm_manifest.replace("webhook.wasm", "crm.wasm");
    host.add_target_raw("crm", "", &crm_manifest);
    host.add_target_raw("garbled", "", "events = [\n");
    std::fs::write(host.plugins_dir().join("crm.wasm"), b"\0asm garbage").unwrap();

    host.set_config("strict_start", true);
    match host.try_start().await {
        Err(StartError::Exited { stderr, .. }) => {
            assert!(
                stderr.contains("crm.wasm") && stderr.contains("garbled.toml"),
                "{stderr}"
            )
        }
        other => panic!("strict_start should refuse to start: {other:?}"),
    }
    host.set_config("strict_start", false);
    host.start().await;

    let (status, health) = host.healthz(default_timeout()).await.expect("/healthz answers");
    assert_eq!(status, 200, "{health}");
    assert_eq!(health["status"], "degraded", "{health}");
    assert_eq!(health["held"], json!(["crm"]), "{health}");
    let files: Vec<&str> = health["errors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["file"].as_str().unwrap())
        .collect();
    assert!(files.iter().any(|f| f.ends_with("crm.wasm")), "{health}");
    assert!(files.iter().any(|f| f.ends_with("garbled.toml")), "{health}");
    assert!(host.stderr().contains("STARTING DEGRADED"), "{}", host.stderr_tail(20));

    let id = host.enqueue("order.created", json!({"n": 1})).await;
    host.wait_delivered(&id, &["hook"]).await;
    let ev = host
        .wait_for(&id, default_timeout(), |ev| delivery(ev, "crm")["status"] == "paused")
        .await;
    let held = delivery(&ev, "crm");
    assert!(
        held["last_error"].as_str().is_some_and(|e| e.contains("crm.wasm")),
        "the load error is the reason: {held}"
    );
    assert!(
        ev["deliveries"]
            .as_array()
            .unwrap()
            .iter()
            .all(|d| d["target"] != "garbled"),
        "a manifest that does not parse routes nothing: {ev:#}"
    );
    let targets = host.targets().await;
    let crm_entry = target_entry(&targets, "crm");
    assert_eq!(crm_entry["held"], true, "{crm_entry}");
    assert_eq!(crm_entry["loaded"], false, "{crm_entry}");
    assert!(crm_entry["last_reload_error"]["message"].is_string(), "{crm_entry}");

    // A good file appears: the held deliveries flow.
    host.deploy("crm.wasm", &testkit::artifacts::plugin_bytes("webhook.wasm").await);
    host.wait_delivered(&id, &["crm"]).await;
    rx.expect_requests("/crm", 1).await;
}

/// Retention deletes finished events (with deliveries and history) after their age, keeps
/// dead ones until pruned, and the idempotency ledger still recognises a deleted event's key.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retention_deletes_finished_events_keeps_dead_ones_and_prune_removes_them() {
    let rx = Receiver::start().await;
    let mut host = Host::new();
    host.set_config("retention", "2s")
        .set_config("retention_interval_ms", 200)
        .add_target("hook", &Target::webhook(&rx.url("/hook")).events(&["order.*"]))
        .add_target("bad", &Target::misbehave("permanent").events(&["invoice.*"]));
    host.start().await;

    let (_, first) = host
        .post_event(&json!({"type": "order.created", "payload": {}, "idempotency_key": "k-1"}))
        .await;
    let first_id = first["id"].as_str().unwrap().to_owned();
    for n in 0..4 {
        host.enqueue("order.created", json!({ "n": n })).await;
    }
    let dead_id = host.enqueue("invoice.paid", json!({})).await;
    host.wait_settled(&dead_id, &["bad"]).await;
    rx.expect_requests("/hook", 5).await;

    eventually_within(scaled(Duration::from_secs(20)), "retention", || {
        let left = host.count_rows("events");
        (left <= 1, format!("{left} events left"))
    })
    .await;
    let (code, _) = host.get_event_raw(&first_id).await;
    assert_eq!(code, 404, "a delivered event is gone after its retention");
    let (code, ev) = host.get_event_raw(&dead_id).await;
    assert_eq!(code, 200, "a dead one is kept: {ev}");
    assert_eq!(
        host.count_rows("attempts"),
        1,
        "only the dead delivery's history is left"
    );

    let (code, again) = host
        .post_event(&json!({"type": "order.created", "payload": {}, "idempotency_key": "k-1"}))
        .await;
    assert_eq!((code, &again["duplicate"]), (200, &json!(true)), "{again}");
    assert_eq!(again["id"], first_id.as_str());

    let refused = host.run_cli(&["prune"]).await;
    assert!(
        !refused.status.success() && refused.stderr.contains("--all"),
        "{refused}"
    );
    let pruned = host.run_cli(&["prune", "--target", "bad"]).await;
    assert!(pruned.status.success(), "{pruned}");
    assert!(pruned.stdout.contains("pruned 1 deliveries"), "{pruned}");
    assert_eq!(host.count_rows("events"), 0);
}

/// Every refusal is JSON, path-decoding rejections included, and out-of-range paging
/// parameters are refused naming the parameter.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_refusal_is_json_and_names_the_parameter() {
    let mut host = Host::new();
    host.start().await;
    for path in ["/v1/events/%FF%FE", "/v1/deliveries/failed?limit=0"] {
        let (code, body) = host.get_json(path).await;
        assert_eq!(code, 400, "{path}: {body}");
        assert!(body["error"].is_string(), "{path}: {body}");
    }
    let (code, body) = host.post_json("/v1/targets/%FF/pause", &json!({})).await;
    assert_eq!(code, 400, "{body}");
    assert!(body["error"].is_string(), "{body}");
    for (query, word) in [
        ("limit=0", "limit"),
        ("limit=100000", "limit"),
        ("after=-1", "after"),
        ("limit=x", "limit"),
        // PostgreSQL's text cannot hold NUL: refused as input on every store, not a 503.
        ("error=F%00x", "error"),
    ] {
        let (code, body) = host.get_json(&format!("/v1/deliveries/failed?{query}")).await;
        assert_eq!(code, 400, "{query}: {body}");
        let msg = body["error"].as_str().unwrap_or_default();
        assert!(msg.contains(word), "{query}: {body}");
    }
    let (code, body) = host.get_json("/v1/deliveries/failed?limit=1000&after=0").await;
    assert_eq!(code, 200, "{body}");
    let (code, body) = host.post_json("/v1/deliveries/replay", &json!({"limit": 0})).await;
    assert_eq!(code, 400, "{body}");
    assert!(body["error"].as_str().unwrap_or_default().contains("limit"), "{body}");
}
