//! Several `outboxd serve` hosts on one PostgreSQL database (each test creates its own
//! database on `OUTBOXD_TEST_PG_URL` and drops it at the end): they share the work, survive
//! each other's SIGKILLs, and keep what must hold cluster-wide: the producer idempotency
//! ledger, per-key FIFO of an `ordered` target, and a target's `rate_per_sec`.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::{Value, json};
use testkit::{Behavior, Host, Receiver, Target, scaled};

/// `n` hosts on one fresh PostgreSQL database, each with `targets`, started together (so
/// their schema migrations race, under the advisory lock).
async fn cluster(n: usize, targets: &[(&str, Target)]) -> Vec<Host> {
    let first = Host::on_postgres();
    let mut hosts = Vec::with_capacity(n);
    for _ in 1..n {
        hosts.push(Host::sharing_database(&first));
    }
    hosts.insert(0, first);
    let mut starting = Vec::new();
    for mut h in hosts {
        for (name, t) in targets {
            h.add_target(name, t);
        }
        starting.push(tokio::spawn(async move {
            h.start().await;
            h
        }));
    }
    let mut out = Vec::with_capacity(n);
    for s in starting {
        out.push(s.await.unwrap_or_else(|e| std::panic::resume_unwind(e.into_panic())));
    }
    out
}

fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .expect("HTTP client")
}

// ---------------------------------------------------------------------------------------------

/// Events posted in the kill test.
const EVENTS: usize = 5_000;
/// Events per POST.
const BATCH: usize = 25;
/// SIGKILLs.
const KILLS: usize = 10;
const HOSTS: usize = 3;
const CRITICAL: [&str; 2] = ["alpha", "beta"];

/// About 15 % failures (500s), a few slow answers and rare hangs cut short by the timeout.
fn flaky(seed: u64) -> Behavior {
    Behavior::ok()
        .hang_fraction(0.003)
        .fail_fraction(0.15, 500)
        .delay_fraction(0.05, Duration::from_millis(100))
        .seed(seed)
}

/// Posts `EVENTS` events in batches, each event with a producer idempotency key, each batch
/// to a random live host; a batch whose post fails (its host was killed) goes to another host
/// with the same keys.
async fn post_all(addrs: Arc<Mutex<Vec<Option<SocketAddr>>>>, seed: u64) -> usize {
    let client = client();
    let mut rng = StdRng::seed_from_u64(seed);
    let deadline = Instant::now() + scaled(Duration::from_secs(300));
    let mut reposted = 0;
    for start in (0..EVENTS).step_by(BATCH) {
        let body: Vec<Value> = (start..(start + BATCH).min(EVENTS))
            .map(|i| json!({"type": "order.created", "payload": {"n": i}, "idempotency_key": format!("ev-{i}")}))
            .collect();
        loop {
            assert!(Instant::now() < deadline, "could not post batch {start} in time");
            let live: Vec<SocketAddr> = addrs.lock().unwrap().iter().flatten().copied().collect();
            if !live.is_empty() {
                let a = live[rng.random_range(0..live.len())];
                match client.post(format!("http://{a}/v1/events")).json(&body).send().await {
                    Ok(resp) if matches!(resp.status().as_u16(), 200 | 202) => break,
                    Ok(resp) if resp.status().is_client_error() => panic!("POST /v1/events answered {}", resp.status()),
                    Ok(_) | Err(_) => reposted += 1,
                }
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    reposted
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_hosts_deliver_everything_through_ten_kill_9s() {
    let seed = testkit::chaos_seed();
    let mut rng = StdRng::seed_from_u64(seed);
    let rx = Receiver::builder()
        .path("/alpha", flaky(seed ^ 1))
        .path("/beta", flaky(seed ^ 2))
        .start()
        .await;
    let targets: Vec<(&str, Target)> = CRITICAL
        .iter()
        .map(|t| {
            (
                *t,
                Target::webhook(&rx.url(&format!("/{t}")))
                    .concurrency(8)
                    .timeout_ms(1_000)
                    .retry(50, 50, 500)
                    .breaker(5, 200),
            )
        })
        .collect();
    let mut hosts = cluster(HOSTS, &targets).await;
    let started = Instant::now();
    let addrs = Arc::new(Mutex::new(hosts.iter().map(|h| Some(h.addr())).collect::<Vec<_>>()));
    let poster = tokio::spawn(post_all(Arc::clone(&addrs), seed ^ 3));
    for k in 0..KILLS {
        tokio::time::sleep(Duration::from_millis(rng.random_range(300..1_500))).await;
        let victim = rng.random_range(0..HOSTS);
        addrs.lock().unwrap()[victim] = None;
        let status = hosts[victim].kill_9().await;
        assert!(!status.success(), "kill -9 #{k} is not a clean exit: {status}");
        hosts[victim].start().await;
        addrs.lock().unwrap()[victim] = Some(hosts[victim].addr());
    }
    eprintln!("{KILLS} kills done after {:?}", started.elapsed());
    let reposted = poster
        .await
        .unwrap_or_else(|e| std::panic::resume_unwind(e.into_panic()));
    eprintln!("posted {EVENTS} events ({reposted} batches posted again after a kill)");

    // Wait until every delivery is final.
    let h = &hosts[0];
    let deadline = Instant::now() + scaled(Duration::from_secs(300));
    loop {
        let open = h.sql_i64("SELECT count(*) FROM deliveries WHERE status <> 'delivered'");
        if open == 0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{open} deliveries are still not delivered: {:?}",
            h.sql("SELECT target, status, count(*) FROM deliveries GROUP BY target, status")
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    eprintln!("everything delivered after {:?}", started.elapsed());

    // One event per producer key, one delivery per event and target, all delivered. (A
    // breaker that opened and closed again adds an `outboxd.target.recovered` event of its
    // own, which no target here subscribes to.)
    assert_eq!(
        h.sql_i64("SELECT count(*) FROM events WHERE type NOT LIKE 'outboxd.%'"),
        EVENTS as i64,
        "retried posts were deduplicated"
    );
    assert_eq!(h.count_rows("deliveries"), (2 * EVENTS) as i64);
    assert_eq!(
        h.sql_i64("SELECT count(*) FROM attempts WHERE outcome = 'running'"),
        0,
        "no attempt is left running"
    );
    // Each delivery was settled by the attempt that held its lease last: the history row of
    // its current lease (n = attempt_seq) is the successful one. A host that lost its lease
    // (expired, taken over) may record what its attempt did, but never settle the delivery.
    assert_eq!(
        h.sql_i64(
            "SELECT count(*) FROM deliveries d JOIN attempts a ON a.delivery_id = d.id AND a.n = d.attempt_seq
             WHERE a.outcome <> 'delivered' OR d.delivered_at < a.started_at"
        ),
        0,
        "a delivery was settled by an attempt that no longer held its lease"
    );
    // The work was shared: attempts were run by several hosts (each run has its own owner).
    let owners = h.sql_i64("SELECT count(DISTINCT owner) FROM attempts");
    assert!(owners > HOSTS as i64, "only {owners} lease owners ran attempts");

    // Every delivery reached its target (deduplicated by its idempotency key).
    let ids: BTreeSet<String> = h
        .sql("SELECT id FROM events WHERE type NOT LIKE 'outboxd.%'")
        .into_iter()
        .map(|r| r[0].clone())
        .collect();
    for t in CRITICAL {
        let seen: BTreeSet<String> = rx
            .requests_at(&format!("/{t}"))
            .iter()
            .filter(|r| r.succeeded())
            .filter_map(|r| r.idempotency_key().map(str::to_owned))
            .collect();
        let expected: BTreeSet<String> = ids.iter().map(|id| format!("{id}.{t}")).collect();
        let missing: Vec<_> = expected.difference(&seen).take(5).collect();
        assert!(missing.is_empty(), "{t}: no successful request for {missing:?}…");
        assert_eq!(seen.len(), EVENTS, "{t}: a key nobody posted");
    }
    for host in &mut hosts {
        host.stop().await;
    }
}

// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hosts_ingesting_one_key_at_once_store_one_event() {
    let rx = Receiver::start().await;
    let hosts = cluster(2, &[("crm", Target::webhook(&rx.url("/crm")))]).await;
    let client = client();
    const KEYS: usize = 50;
    for i in 0..KEYS {
        let body = json!({"type": "order.created", "payload": {"n": i}, "idempotency_key": format!("same-{i}")});
        let post = |h: &Host| client.post(h.url("/v1/events")).json(&body).send();
        let (a, b) = tokio::join!(post(&hosts[0]), post(&hosts[1]));
        let (a, b): (Value, Value) = (
            a.expect("post to host 0").json().await.expect("JSON"),
            b.expect("post to host 1").json().await.expect("JSON"),
        );
        assert_eq!(a["id"], b["id"], "both hosts answer with the first event's id: {a} {b}");
        let fresh = [&a, &b].iter().filter(|v| v["duplicate"] == false).count();
        assert_eq!(fresh, 1, "exactly one host stored the event: {a} {b}");
    }
    let h = &hosts[0];
    assert_eq!(h.count_rows("events"), KEYS as i64);
    assert_eq!(h.count_rows("idempotency_keys"), KEYS as i64);
    assert_eq!(h.count_rows("deliveries"), KEYS as i64);
    rx.expect_requests("/crm", KEYS).await;
}

// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_ordered_target_keeps_per_key_order_across_three_hosts() {
    const KEYS: usize = 8;
    const PER_KEY: usize = 25;
    let rx = Receiver::builder()
        .path("/ledger", Behavior::ok().fail_fraction(0.2, 500).seed(11))
        .start()
        .await;
    let hosts = cluster(
        3,
        &[(
            "ledger",
            Target::webhook(&rx.url("/ledger"))
                .ordered(true)
                .concurrency(4)
                .retry(50, 20, 100)
                .breaker(0, 1_000),
        )],
    )
    .await;
    // Each event is acknowledged before the next is posted, round-robin across the hosts:
    // the order of a key is the order its events were accepted in.
    let client = client();
    let mut n = 0;
    for seq in 0..PER_KEY {
        for key in 0..KEYS {
            let h = &hosts[n % hosts.len()];
            n += 1;
            let body = json!({
                "type": "ledger.entry",
                "payload": {"key": key, "seq": seq},
                "ordering_key": format!("account-{key}"),
            });
            let resp = client.post(h.url("/v1/events")).json(&body).send().await.expect("post");
            assert_eq!(resp.status().as_u16(), 202);
        }
    }
    let total = KEYS * PER_KEY;
    rx.wait_until(scaled(Duration::from_secs(120)), |reqs| {
        reqs.iter().filter(|r| r.succeeded()).count() >= total
    })
    .await
    .unwrap_or_else(|e| panic!("{e}"));

    // In arrival order, a key's event `seq` may reach the receiver only once `seq - 1` has
    // been accepted by it (a repeat of an earlier one is at-least-once, not disorder).
    let mut next: BTreeMap<u64, u64> = BTreeMap::new();
    let mut reqs = rx.requests_at("/ledger");
    reqs.sort_by_key(|r| r.seq);
    for r in &reqs {
        let data = &r.json()["data"];
        let (key, seq) = (data["key"].as_u64().expect("key"), data["seq"].as_u64().expect("seq"));
        let expected = next.entry(key).or_default();
        assert!(
            seq <= *expected,
            "key {key}: event {seq} arrived before event {expected} was delivered ({r})"
        );
        if seq == *expected && r.succeeded() {
            *expected += 1;
        }
    }
    assert!(
        next.values().all(|&v| v == PER_KEY as u64),
        "every event delivered: {next:?}"
    );
    let owners = hosts[0].sql_i64("SELECT count(DISTINCT owner) FROM attempts");
    assert!(owners >= 2, "the hosts shared the ordered target ({owners} owner)");
}

// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rate_per_sec_limits_the_target_not_each_host() {
    const RATE: usize = 50;
    const EVENTS: usize = 600;
    let rx = Receiver::start().await;
    let hosts = cluster(
        3,
        &[(
            "metered",
            Target::webhook(&rx.url("/metered"))
                .rate_per_sec(RATE as f64)
                .concurrency(16),
        )],
    )
    .await;
    let body: Vec<Value> = (0..EVENTS)
        .map(|i| json!({"type": "usage.recorded", "payload": {"n": i}}))
        .collect();
    let (status, answer) = hosts[0].post_json("/v1/events", &Value::Array(body)).await;
    assert_eq!(status, 202, "{answer}");
    let reqs = rx
        .wait_until(scaled(Duration::from_secs(120)), |reqs| reqs.len() >= EVENTS)
        .await
        .unwrap_or_else(|e| panic!("{e}"));

    // Attempts per 1 s window, from the first one. The bucket starts full (burst = rate), so
    // the first window may hold the burst and a second's refill; every later one at most the
    // refill, plus a small tolerance for the time between a claim and the request's arrival.
    const TOLERANCE: usize = 5;
    let first = reqs.iter().map(|r| r.received_at).min().expect("requests");
    let mut windows: BTreeMap<u64, usize> = BTreeMap::new();
    for r in &reqs {
        *windows
            .entry(r.received_at.duration_since(first).as_secs())
            .or_default() += 1;
    }
    eprintln!("attempts per second: {windows:?}");
    for (&second, &n) in &windows {
        let limit = if second == 0 { 2 * RATE } else { RATE } + TOLERANCE;
        assert!(
            n <= limit,
            "{n} attempts in second {second}, over the limit of {limit}: {windows:?}"
        );
    }
    // Three hosts each limiting on their own would need only a third of this.
    let span = reqs
        .iter()
        .map(|r| r.received_at)
        .max()
        .expect("requests")
        .duration_since(first);
    let floor = Duration::from_secs_f64((EVENTS - RATE) as f64 / RATE as f64 * 0.9);
    assert!(span >= floor, "{EVENTS} attempts took only {span:?}");
    let owners = hosts[0].sql_i64("SELECT count(DISTINCT owner) FROM attempts");
    assert!(owners >= 2, "the hosts shared the target ({owners} owner)");
}

// ---------------------------------------------------------------------------------------------

/// A lane that knows its target paused does not wake for new work; a resumption from another
/// process (here the CLI) is announced to every host, so the lanes do not wait for their poll.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resume_from_the_command_line_reaches_a_paused_host_at_once() {
    let rx = Receiver::start().await;
    let mut host = Host::on_postgres();
    host.add_target("crm", &Target::webhook(&rx.url("/crm")))
        // Longer than this test: only an announcement can wake the lanes in time.
        .set_config("poll_interval_ms", 120_000);
    host.start().await;
    let (status, body) = host.post_json("/v1/targets/crm/pause", &json!({})).await;
    assert_eq!(status, 200, "{body}");
    let mut ids = Vec::new();
    for n in 0..5 {
        ids.push(host.enqueue("order.created", json!({"n": n})).await);
    }
    rx.expect_no_more_at("/crm", 0, Duration::from_millis(500)).await;

    let resumed = Instant::now();
    let out = host.run_cli(&["target", "resume", "crm"]).await;
    assert!(out.status.success() && out.stdout.contains("resumed"), "{out}");
    for id in &ids {
        host.wait_delivered(id, &["crm"]).await;
    }
    let took = resumed.elapsed();
    assert!(
        took < Duration::from_secs(20),
        "delivered {took:?} after the resumption: the lanes waited for their poll"
    );
    assert_eq!(rx.count_at("/crm"), 5, "{}", rx.describe());
}
