//! Delivery that adapts to each receiver (issue 21), against the real binary and the
//! testkit's load-dependent receiver models: a target's `concurrency` is the ceiling of a
//! limit learned from the receiver's refusals and round trips, and `GET /v1/targets` and
//! `/metrics` show it. These tests assert behaviour and directions with generous,
//! machine-independent bounds; the figures (goodput, refusals, how fast the limit follows)
//! are the benchmark's (`cargo xtask bench`, bench/src/adaptive.rs).

use std::time::Duration;

use serde_json::{Value, json};
use testkit::{Behavior, Host, Receiver, Target, concurrency_limit, scaled, target_count, target_entry};

/// The ceiling of every target here.
const CEILING: u64 = 16;
/// The admitting receivers' service time.
const SERVICE: Duration = Duration::from_millis(20);

/// A webhook target to `path` of `rx` for events of type `kind.*`, concurrency 16, quick
/// retries (the delays a receiver asks for still apply).
fn target(rx: &Receiver, path: &str, kind: &str) -> Target {
    Target::webhook(&rx.url(path))
        .events(&[&format!("{kind}.*")])
        .concurrency(CEILING as u32)
        .retry(1_000, 50, 1_000)
}

/// Posts `n` events of type `kind.created` in batches of 500.
async fn post(host: &Host, kind: &str, n: usize) {
    let mut i = 0;
    while i < n {
        let batch: Vec<Value> = (i..(i + 500).min(n))
            .map(|k| json!({"type": format!("{kind}.created"), "payload": {"n": k}}))
            .collect();
        i += batch.len();
        host.enqueue_batch(batch).await;
    }
}

/// What the limits of the targets looked like while `host` was polled.
#[derive(Debug, Default)]
struct Seen {
    /// Every limit reported, in order.
    limits: Vec<u64>,
}

impl Seen {
    /// The limits of the second half of the polls (slow start may overshoot for a window at
    /// first; by then the limit has settled).
    fn settled(&self) -> &[u64] {
        &self.limits[self.limits.len() / 2..]
    }

    /// The median of [`Seen::settled`].
    fn settled_median(&self) -> Option<u64> {
        let mut settled = self.settled().to_vec();
        settled.sort_unstable();
        settled.get(settled.len() / 2).copied()
    }
}

/// Polls `GET /v1/targets` every 50 ms, recording `name`'s limit (once it has one), until
/// `done` holds over a document or `timeout` (scaled) passes; panics then, saying `what`.
async fn watch(
    host: &Host,
    name: &str,
    timeout: Duration,
    what: &str,
    mut done: impl FnMut(&Value, &Seen) -> bool,
) -> Seen {
    let timeout = scaled(timeout);
    let deadline = tokio::time::Instant::now() + timeout;
    let mut seen = Seen::default();
    loop {
        let targets = host.targets().await;
        if let Some(limit) = concurrency_limit(&targets, name) {
            seen.limits.push(limit);
        }
        if done(&targets, &seen) {
            return seen;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{what}: not within {timeout:?}; {name}: {:#}; limits seen {:?}\n--- stderr (tail) ---\n{}",
            target_entry(&targets, name),
            seen.limits,
            host.stderr_tail(30)
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The value of `metric{target="name"}` in `/metrics`, if present.
async fn metric(host: &Host, metric: &str, name: &str) -> Option<f64> {
    let text = reqwest::get(host.url("/metrics")).await.unwrap().text().await.unwrap();
    let prefix = format!("{metric}{{");
    let label = format!("target=\"{name}\"");
    text.lines()
        .filter(|l| l.starts_with(&prefix) && l.contains(&label))
        .find_map(|l| l.rsplit_once(' ')?.1.parse().ok())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_receiver_that_admits_four_at_once_brings_the_limit_down_and_gets_everything() {
    const EVENTS: usize = 300;
    const FIXED_EVENTS: usize = 20;
    let rx = Receiver::builder()
        .path("/adaptive", Behavior::admit(4, SERVICE))
        .path("/fixed", Behavior::admit(4, SERVICE))
        .keep_requests(false)
        .start()
        .await;
    let mut host = Host::new();
    host.add_target("adaptive", &target(&rx, "/adaptive", "adaptive"))
        .add_target("fixed", &target(&rx, "/fixed", "fixed").concurrency_mode("fixed"));
    host.start().await;
    post(&host, "adaptive", EVENTS).await;
    post(&host, "fixed", FIXED_EVENTS).await;

    let mut fixed_limits = Vec::new();
    let seen = watch(
        &host,
        "adaptive",
        Duration::from_secs(60),
        "every event delivered to both targets",
        |ts, _| {
            fixed_limits.extend(concurrency_limit(ts, "fixed"));
            target_count(ts, "adaptive", "delivered") == EVENTS as u64
                && target_count(ts, "fixed", "delivered") == FIXED_EVENTS as u64
        },
    )
    .await;
    let load = rx.load_at("/adaptive");
    eprintln!(
        "adaptive: limits seen {:?}; {} requests, {} refused",
        seen.limits, load.requests, load.refused
    );
    // Below the ceiling once settled, and near the receiver's 4 (generously: at most twice).
    assert!(
        !seen.settled().is_empty() && seen.settled().iter().all(|l| *l < CEILING),
        "the limit should settle below the ceiling of {CEILING}: {:?}",
        seen.limits
    );
    assert!(
        seen.settled_median().is_some_and(|m| m <= 8),
        "the limit should settle near the receiver's 4: {:?}",
        seen.limits
    );
    assert!(
        load.refused_share() < 0.4,
        "{} of {} requests refused: the refusals should be a minority",
        load.refused,
        load.requests
    );
    assert_eq!(load.succeeded, EVENTS, "one success per event");

    let targets = host.targets().await;
    let adaptive = &target_entry(&targets, "adaptive")["concurrency_limit"];
    assert_eq!(adaptive["mode"], "adaptive", "{adaptive:#}");
    assert_eq!(adaptive["ceiling"], CEILING, "{adaptive:#}");
    assert!(
        adaptive["refusals"].as_u64().is_some_and(|r| r > 0),
        "the receiver refused, the target counted no refusal: {adaptive:#}"
    );
    assert!(
        adaptive["baseline_ms"].as_f64().is_some_and(|b| b > 0.0),
        "a baseline was learned: {adaptive:#}"
    );
    let budget = &target_entry(&targets, "adaptive")["retry_budget"];
    for key in ["engaged", "first_attempts", "retries", "allowed", "held"] {
        assert!(!budget[key].is_null(), "retry_budget.{key} missing: {budget:#}");
    }

    // Fixed: the receiver refused it just as much, and its limit stayed the manifest's.
    let fixed = &target_entry(&targets, "fixed")["concurrency_limit"];
    assert_eq!(fixed["mode"], "fixed", "{fixed:#}");
    assert_eq!(
        (&fixed["limit"], &fixed["ceiling"]),
        (&json!(CEILING), &json!(CEILING)),
        "{fixed:#}"
    );
    assert!(
        fixed_limits.iter().all(|l| *l == CEILING),
        "a fixed limit moved: {fixed_limits:?}"
    );
    assert!(rx.load_at("/fixed").refused > 0, "the fixed target was refused too");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_limit_follows_a_capacity_that_halves_and_comes_back() {
    // More than the run needs: it stops once the limit has come back up.
    const EVENTS: usize = 6_000;
    let rx = Receiver::builder()
        .path("/shrinking", Behavior::admit(8, SERVICE))
        .keep_requests(false)
        .start()
        .await;
    let mut host = Host::new();
    host.add_target("shrinking", &target(&rx, "/shrinking", "shrinking"));
    host.start().await;
    post(&host, "shrinking", EVENTS).await;

    // Up past the capacity to come while the receiver takes 8.
    let before = watch(
        &host,
        "shrinking",
        Duration::from_secs(30),
        "the limit growing past 5 while the receiver takes 8 at once",
        |_, seen| seen.limits.last().is_some_and(|l| *l >= 6),
    )
    .await;

    rx.behave("/shrinking", Behavior::admit(3, SERVICE));
    let down = watch(
        &host,
        "shrinking",
        Duration::from_secs(30),
        "the limit coming down to the halved capacity (at most 4)",
        |_, seen| seen.limits.last().is_some_and(|l| *l <= 4),
    )
    .await;

    rx.behave("/shrinking", Behavior::admit(8, SERVICE));
    let up = watch(
        &host,
        "shrinking",
        Duration::from_secs(30),
        "the limit going back up past the halved capacity (at least 6)",
        |_, seen| seen.limits.last().is_some_and(|l| *l >= 6),
    )
    .await;
    eprintln!(
        "limits at 8: {:?}; after halving: {:?}; after the restore: {:?}",
        before.limits, down.limits, up.limits
    );
    let targets = host.targets().await;
    assert!(
        target_count(&targets, "shrinking", "delivered") < EVENTS as u64,
        "the backlog lasted the whole run"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_receiver_that_queues_keeps_the_limit_below_the_ceiling_and_is_never_refused() {
    const EVENTS: usize = 600;
    // 20 ms up to 4 at once, 10 ms more for each beyond: 140 ms at the ceiling.
    let rx = Receiver::builder()
        .path(
            "/queue",
            Behavior::queueing(Duration::from_millis(20), Duration::from_millis(10), 4),
        )
        .keep_requests(false)
        .start()
        .await;
    let mut host = Host::new();
    host.add_target("queue", &target(&rx, "/queue", "queue"));
    host.start().await;
    post(&host, "queue", EVENTS).await;

    let seen = watch(
        &host,
        "queue",
        Duration::from_secs(60),
        "every event delivered",
        |ts, _| target_count(ts, "queue", "delivered") == EVENTS as u64,
    )
    .await;
    let load = rx.load_at("/queue");
    eprintln!(
        "queueing: limits seen {:?}; peak {} at once, p99 {:?}",
        seen.limits,
        load.peak_concurrency,
        load.latency_quantile(0.99)
    );
    assert!(
        !seen.settled().is_empty() && seen.settled().iter().all(|l| *l < CEILING),
        "the limit should settle below the ceiling: {:?}",
        seen.limits
    );
    assert_eq!(load.refused, 0);
    assert_eq!(load.succeeded, EVENTS);
    let targets = host.targets().await;
    let limit = &target_entry(&targets, "queue")["concurrency_limit"];
    assert_eq!(limit["refusals"], 0, "no timeout, no refusal: {limit:#}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_bucket_receiver_is_paced_gets_everything_and_the_metrics_count_its_refusals() {
    const EVENTS: usize = 600;
    const RATE: f64 = 100.0;
    let rx = Receiver::builder().path("/bucket", Behavior::ok()).start().await;
    let mut host = Host::new();
    host.add_target("bucket", &target(&rx, "/bucket", "bucket"));
    host.start().await;

    // Before any refusal: the limit is in /metrics, no refusal is counted, nothing is paced.
    post(&host, "bucket", 1).await;
    watch(
        &host,
        "bucket",
        Duration::from_secs(30),
        "the first delivery",
        |ts, _| target_count(ts, "bucket", "delivered") == 1,
    )
    .await;
    let gauge = metric(&host, "outboxd_concurrency_limit", "bucket").await;
    assert!(
        gauge.is_some_and(|g| (1.0..=CEILING as f64).contains(&g)),
        "outboxd_concurrency_limit{{target=\"bucket\"}} is {gauge:?}"
    );
    let before = metric(&host, "outboxd_refusals_total", "bucket").await.unwrap_or(0.0);
    assert_eq!(before, 0.0, "no refusal yet");
    assert_eq!(metric(&host, "outboxd_pace", "bucket").await, None, "not paced");
    let targets = host.targets().await;
    assert_eq!(
        target_entry(&targets, "bucket")["concurrency_limit"]["pace_per_sec"],
        Value::Null
    );

    // 100 a second, 10 at most at once in the bucket, 429 when empty: 16 at a time drain it
    // at once, and a slot above its rate would turn out 429s as fast as it is refused.
    rx.behave(
        "/bucket",
        Behavior::token_bucket(RATE, 10).service_time(Duration::from_millis(10)),
    );
    post(&host, "bucket", EVENTS).await;
    // Paced while it drains, visible in /metrics.
    let deadline = tokio::time::Instant::now() + scaled(Duration::from_secs(30));
    let pace = loop {
        if let Some(pace) = metric(&host, "outboxd_pace", "bucket").await {
            break pace;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "never paced: {:#}\n--- stderr (tail) ---\n{}",
            target_entry(&host.targets().await, "bucket"),
            host.stderr_tail(30)
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(
        pace > 0.0 && pace < 4.0 * RATE,
        "paced at {pace} a second against a bucket of {RATE}"
    );
    let mut paces = Vec::new();
    watch(
        &host,
        "bucket",
        Duration::from_secs(60),
        "every event delivered",
        |ts, _| {
            paces.extend(target_entry(ts, "bucket")["concurrency_limit"]["pace_per_sec"].as_f64());
            target_count(ts, "bucket", "delivered") == EVENTS as u64 + 1
        },
    )
    .await;
    assert!(!paces.is_empty(), "the API showed the pace too");
    let load = rx.load_at("/bucket");
    assert_eq!(load.succeeded, EVENTS + 1);
    assert!(load.refused > 0, "the bucket ran dry at some point");
    // Paced, the refusals are a few while the pace is learned and one now and then as it
    // probes; unpaced, a slot above the rate turns out a 429 per round trip of its own.
    assert!(
        load.refused * 100 <= load.requests * 15,
        "{} of {} requests refused",
        load.refused,
        load.requests
    );
    let after = metric(&host, "outboxd_refusals_total", "bucket").await.unwrap_or(0.0);
    eprintln!(
        "token bucket: {} requests, {} refused; outboxd_refusals_total {after}; paces {paces:?}",
        load.requests, load.refused
    );
    assert!(
        after > before,
        "the receiver refused {} requests, outboxd_refusals_total stayed {after}",
        load.refused
    );
    let targets = host.targets().await;
    let limit = &target_entry(&targets, "bucket")["concurrency_limit"];
    assert_eq!(
        limit["refusals"].as_f64(),
        Some(after),
        "the API and /metrics agree: {limit:#}"
    );
}
