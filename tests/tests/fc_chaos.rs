//! Chaos: three targets of different failure classes (critical, best-effort, slow) on
//! receivers that fail about 30 % of requests at random (500s, 429 with `Retry-After`,
//! hangs the target's timeout cuts short), while the host is SIGKILLed ten times at random
//! moments and restarted, with events being posted all along. At the end nothing is lost
//! or stuck: every critical and slow delivery arrived, every best-effort one was delivered
//! or discarded, and producer idempotency keys kept retried posts from duplicating events.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::{Value, json};
use testkit::{Behavior, Host, Receiver, Target, find_named, scaled, target_entry};

/// Events posted.
const N: usize = 200;
/// SIGKILLs.
const KILLS: usize = 10;
/// Pause between two posts, so that posting spans the kills.
const PACE: Duration = Duration::from_millis(25);
/// Attempts of each target running at once.
const CONCURRENCY: u32 = 4;
/// Requests answered only after this delay (within every target's timeout).
const DELAY: Duration = Duration::from_millis(150);

const TARGETS: [&str; 3] = ["critical", "best", "slow"];

/// About 30 % failures: hangs (cut short by the target's timeout), 429 with
/// `Retry-After: 1`, 500s; some successes arrive late.
fn chaotic(seed: u64) -> Behavior {
    Behavior::ok()
        .hang_fraction(0.03)
        .retry_after_fraction(0.08, 429, 1)
        .fail_fraction(0.22, 500)
        .delay_fraction(0.10, DELAY)
        .seed(seed)
}

/// Posts `N` events, one at a time, each with a producer idempotency key, to whatever
/// address the host currently listens on; a post that fails (the host was killed) is
/// repeated with the same key after the restart. Returns the event ids in order.
async fn post_all(addr: Arc<Mutex<Option<SocketAddr>>>) -> Vec<String> {
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()
        .expect("HTTP client");
    let deadline = Instant::now() + scaled(Duration::from_secs(120));
    let mut ids = Vec::with_capacity(N);
    let mut retried = 0usize;
    for i in 0..N {
        let body = json!({
            "type": "order.created",
            "payload": {"n": i},
            "idempotency_key": format!("chaos-{i}"),
        });
        loop {
            assert!(Instant::now() < deadline, "could not post event {i} in time");
            let current = *addr.lock().unwrap();
            if let Some(a) = current {
                match client.post(format!("http://{a}/v1/events")).json(&body).send().await {
                    Ok(resp) if matches!(resp.status().as_u16(), 200 | 202) => {
                        let v: Value = resp.json().await.expect("JSON answer");
                        ids.push(v["id"].as_str().expect("id").to_owned());
                        break;
                    }
                    Ok(resp) if resp.status().is_client_error() => {
                        panic!("POST /v1/events answered {}", resp.status())
                    }
                    Ok(_) | Err(_) => retried += 1,
                }
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        tokio::time::sleep(PACE).await;
    }
    eprintln!("posted {N} events ({retried} posts repeated across kills)");
    ids
}

/// (target, status, event id) of every delivery, straight from the database.
fn deliveries(host: &Host) -> Vec<(String, String, String)> {
    host.sql("SELECT target, status, event_id FROM deliveries")
        .into_iter()
        .map(|r| (r[0].clone(), r[1].clone(), r[2].clone()))
        .collect()
}

fn counts_of(targets: &Value, name: &str) -> BTreeMap<String, u64> {
    find_named(targets, name)
        .and_then(|t| t["counts"].as_object())
        .map(|c| c.iter().map(|(k, v)| (k.clone(), v.as_u64().unwrap_or(0))).collect())
        .unwrap_or_default()
}

/// Whether every delivery is final: critical and slow delivered, best-effort delivered or
/// discarded, nothing pending, in flight or paused.
fn all_settled(targets: &Value) -> bool {
    TARGETS.iter().all(|t| {
        let c = counts_of(targets, t);
        let get = |s: &str| c.get(s).copied().unwrap_or(0);
        let idle = get("pending") == 0 && get("in_flight") == 0 && get("paused") == 0;
        let done = match *t {
            "best" => get("delivered") + get("discarded"),
            _ => get("delivered"),
        };
        idle && done == N as u64
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nothing_is_lost_across_random_failures_and_ten_kill_9s() {
    let seed = testkit::chaos_seed();
    let mut rng = StdRng::seed_from_u64(seed);

    let rx = Receiver::builder()
        .path("/critical", chaotic(seed ^ 1))
        .path("/best", chaotic(seed ^ 2))
        .path("/slow", chaotic(seed ^ 3))
        .start()
        .await;
    let mut host = Host::new();
    // (name, class, timeout_ms, max_attempts). A short breaker cool-down: 5 failures in a row
    // are bound to happen at this rate.
    for (name, class, timeout_ms, attempts) in [
        ("critical", None, 1_000, 50),
        ("best", Some("best-effort"), 1_000, 3),
        ("slow", Some("slow"), 2_000, 50),
    ] {
        let mut t = Target::webhook(&rx.url(&format!("/{name}")))
            .concurrency(CONCURRENCY)
            .timeout_ms(timeout_ms)
            .retry(attempts, 50, 500)
            .breaker(5, 200);
        if let Some(class) = class {
            t = t.class(class);
        }
        host.add_target(name, &t);
    }
    host.start().await;
    let targets = host.targets().await;
    for (name, class) in [("critical", "critical"), ("best", "best-effort"), ("slow", "slow")] {
        let t = target_entry(&targets, name);
        assert_eq!(t["class"], class, "{t}");
    }

    let started = Instant::now();
    let addr = Arc::new(Mutex::new(Some(host.addr())));
    let poster = tokio::spawn(post_all(Arc::clone(&addr)));
    for k in 0..KILLS {
        tokio::time::sleep(Duration::from_millis(rng.random_range(150..900))).await;
        *addr.lock().unwrap() = None;
        let status = host.kill_9().await;
        assert!(!status.success(), "kill -9 #{k} is not a clean exit: {status}");
        host.start().await;
        *addr.lock().unwrap() = Some(host.addr());
    }
    eprintln!("{KILLS} kills done after {:?}", started.elapsed());
    let ids = poster
        .await
        .unwrap_or_else(|e| std::panic::resume_unwind(e.into_panic()));

    let unique: BTreeSet<&String> = ids.iter().collect();
    assert_eq!(unique.len(), N, "every post made its own event");
    host.wait_for_targets(scaled(Duration::from_secs(120)), all_settled)
        .await;
    eprintln!("everything settled after {:?}", started.elapsed());

    // The database agrees: N events (retried posts were deduplicated), 3N deliveries, all final.
    let events = host.sql_i64("SELECT count(*) FROM events WHERE type NOT LIKE 'outboxd.%'");
    assert_eq!(events, N as i64, "one event per producer idempotency key");
    let rows = deliveries(&host);
    assert_eq!(rows.len(), 3 * N, "one delivery per event and target");
    let mut by_status: BTreeMap<(String, String), usize> = BTreeMap::new();
    for (t, s, _) in &rows {
        *by_status.entry((t.clone(), s.clone())).or_default() += 1;
    }
    eprintln!("deliveries by (target, status): {by_status:?}");
    for (t, s, e) in &rows {
        assert!(unique.contains(e), "a delivery of an event nobody posted: {e}");
        let ok = match t.as_str() {
            "best" => s == "delivered" || s == "discarded",
            _ => s == "delivered",
        };
        assert!(ok, "delivery of {e} to {t} ended {s}");
    }

    // What the receivers saw: every critical and slow key with a success, no stranger.
    for t in TARGETS {
        let path = format!("/{t}");
        let reqs = rx.requests_at(&path);
        let mut successes: BTreeMap<String, usize> = BTreeMap::new();
        for r in reqs.iter().filter(|r| r.succeeded()) {
            let key = r.idempotency_key().expect("idempotency-key").to_owned();
            *successes.entry(key).or_default() += 1;
        }
        let failed = reqs.len() - reqs.iter().filter(|r| r.succeeded()).count();
        let duplicates: usize = successes.values().map(|n| n - 1).sum();
        eprintln!(
            "{path}: {} requests, {failed} failed, {} keys accepted, {duplicates} accepted again after a kill",
            reqs.len(),
            successes.len()
        );
        assert!(failed > 0, "{path}: the chaos should have failed some requests");
        let expected: BTreeSet<String> = ids.iter().map(|id| format!("{id}.{t}")).collect();
        let got: BTreeSet<String> = successes.keys().cloned().collect();
        let delivered: BTreeSet<String> = rows
            .iter()
            .filter(|(target, s, _)| target == t && s == "delivered")
            .map(|(_, _, e)| format!("{e}.{t}"))
            .collect();
        if t == "best" {
            assert!(
                delivered.is_subset(&got),
                "{path}: delivered deliveries the receiver never accepted: {:?}",
                delivered.difference(&got).take(5).collect::<Vec<_>>()
            );
            assert!(got.is_subset(&expected), "{path}: unknown keys accepted");
        } else {
            assert_eq!(
                got,
                expected,
                "{path}: missing {:?}, unexpected {:?}",
                expected.difference(&got).take(5).collect::<Vec<_>>(),
                got.difference(&expected).take(5).collect::<Vec<_>>()
            );
        }
        // Redelivery after a kill is legitimate (at-least-once) but bounded by what can
        // be in flight, or finished but unsettled, at the moment of a kill.
        let bound = KILLS * 2 * CONCURRENCY as usize;
        assert!(
            duplicates <= bound,
            "{path}: {duplicates} keys accepted more than once (at most {bound} expected)"
        );
    }
}
