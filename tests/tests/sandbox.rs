//! The sandbox holds: misbehaving plugins fail their own deliveries, never the host.

use std::time::{Duration, Instant};

use serde_json::json;
use testkit::{Host, Receiver, Target, delivery, history, scaled};

fn mentions_timeout(text: &str) -> bool {
    let t = text.to_ascii_lowercase();
    ["deadline", "timeout", "timed out", "time limit"]
        .iter()
        .any(|w| t.contains(w))
}

async fn assert_healthy(host: &Host) {
    let started = Instant::now();
    let answer = host.healthz(scaled(Duration::from_secs(2))).await;
    let took = started.elapsed();
    match answer {
        Some((200, body)) => assert_eq!(body["status"], "ok", "/healthz body: {body}"),
        other => panic!(
            "/healthz did not answer 200 within 2 s (after {took:?}): {other:?}\n{}",
            host.stderr_tail(40)
        ),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_endless_loop_hits_the_deadline_and_the_host_carries_on() {
    let rx = Receiver::start().await;
    let mut host = Host::new();
    host.add_target("spin", &Target::misbehave("loop").timeout_ms(500).retry(3, 50, 200))
        .add_target("hook", &Target::webhook(&rx.url("/hook")));
    host.start().await;

    let id = host.enqueue("order.created", json!({"order_id": 5})).await;

    // While the plugin spins, the API answers and the other target delivers.
    host.wait_for(&id, scaled(Duration::from_secs(20)), |ev| {
        delivery(ev, "spin")["status"] == "in_flight" || delivery(ev, "spin")["attempts"].as_u64() >= Some(1)
    })
    .await;
    for _ in 0..4 {
        assert_healthy(&host).await;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    host.wait_delivered(&id, &["hook"]).await;
    assert_eq!(rx.count_at("/hook"), 1, "{}", rx.describe());

    // The spinning attempt is cut at its deadline and retried.
    let ev = host
        .wait_for(&id, scaled(Duration::from_secs(30)), |ev| {
            delivery(ev, "spin")["attempts"].as_u64() >= Some(2)
        })
        .await;
    let d = delivery(&ev, "spin");
    assert_ne!(d["status"], "delivered", "{d:#}");
    let last_error = d["last_error"].as_str().unwrap_or_default();
    assert!(
        mentions_timeout(last_error),
        "last_error should mention the deadline/timeout: {d:#}"
    );
    let hist = history(&ev, "spin");
    let first = &hist[0];
    assert_eq!(first["outcome"], "retry", "{d:#}");
    assert!(mentions_timeout(first["error"].as_str().unwrap_or_default()), "{d:#}");
    let took = first["duration_ms"].as_u64().unwrap_or_default();
    assert!(
        (400..scaled(Duration::from_secs(5)).as_millis() as u64).contains(&took),
        "an attempt with timeout_ms = 500 took {took} ms: {d:#}"
    );

    // Attempts run out: dead, and the host is still fine.
    let ev = host.wait_settled(&id, &["spin"]).await;
    let d = delivery(&ev, "spin");
    assert_eq!(d["status"], "dead", "{d:#}");
    assert_eq!(d["attempts"], 3, "{d:#}");
    assert_healthy(&host).await;
    let second = host.enqueue("order.paid", json!({"order_id": 5})).await;
    host.wait_delivered(&second, &["hook"]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_to_a_host_not_allowed_is_denied_and_dead() {
    let rx = Receiver::start().await;
    let mut host = Host::new();
    host.add_target(
        "sneaky",
        &Target::misbehave("call")
            .config("url", rx.url("/forbidden"))
            // Something else is allowed, but not the receiver.
            .allowed_hosts(&["127.0.0.1:1"])
            .retry(5, 50, 200),
    )
    .add_target(
        "allowed",
        &Target::misbehave("call")
            .config("url", rx.url("/allowed"))
            .allow(&rx.authority())
            .retry(5, 50, 200),
    );
    host.start().await;

    let id = host.enqueue("order.created", json!({"order_id": 6})).await;
    let ev = host.wait_settled(&id, &["sneaky"]).await;
    let d = delivery(&ev, "sneaky");
    assert_eq!(d["status"], "dead", "{d:#}");
    assert_eq!(d["attempts"], 1, "a denial is permanent: {d:#}");
    let last_error = d["last_error"].as_str().unwrap_or_default();
    assert!(
        last_error.to_ascii_lowercase().contains("denied"),
        "last_error should say the request was denied: {d:#}"
    );
    assert_eq!(history(&ev, "sneaky")[0]["outcome"], "permanent", "{d:#}");

    // The allowed twin does reach the receiver, so the denial is the allow-list at work.
    rx.expect_requests("/allowed", 1).await;
    assert_eq!(
        rx.count_at("/forbidden"),
        0,
        "a denied request reached the receiver:\n{}",
        rx.describe()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn traps_memory_hogs_and_failures_are_contained() {
    let rx = Receiver::start().await;
    let mut host = Host::new();
    host.add_target("trap", &Target::misbehave("trap").retry(2, 50, 100))
        .add_target(
            "grow",
            &Target::misbehave("grow")
                .memory_mb(16)
                .timeout_ms(5000)
                .retry(2, 50, 100),
        )
        .add_target("permanent", &Target::misbehave("permanent").retry(5, 50, 100))
        .add_target("fine", &Target::misbehave("ok"))
        .add_target("hook", &Target::webhook(&rx.url("/hook")));
    host.start().await;

    let id = host.enqueue("order.created", json!({"order_id": 7})).await;
    let ev = host
        .wait_settled(&id, &["trap", "grow", "permanent", "fine", "hook"])
        .await;
    let status = |t: &str| delivery(&ev, t)["status"].clone();
    assert_eq!(status("fine"), "delivered", "{ev:#}");
    assert_eq!(status("hook"), "delivered", "{ev:#}");

    for t in ["trap", "grow"] {
        let d = delivery(&ev, t);
        assert_eq!(d["status"], "dead", "{t} must not be delivered: {d:#}");
        assert_eq!(d["attempts"], 2, "{t}: a host-side failure is retried: {d:#}");
        let hist = history(&ev, t);
        assert_eq!(hist[0]["outcome"], "retry", "{t}: {d:#}");
        assert!(
            hist[0]["error"].as_str().is_some_and(|e| !e.is_empty()),
            "{t}: the failure is explained: {d:#}"
        );
    }
    let d = delivery(&ev, "permanent");
    assert_eq!(d["status"], "dead", "{d:#}");
    assert_eq!(d["attempts"], 1, "{d:#}");
    assert_eq!(history(&ev, "permanent")[0]["outcome"], "permanent", "{d:#}");

    assert_healthy(&host).await;
    let status = host.sigterm().await;
    assert!(status.success(), "exit after SIGTERM: {status}");
}

/// The `last_error` of every event's delivery to `target`, in order.
async fn last_errors(host: &Host, ids: &[String], target: &str) -> Vec<String> {
    let mut errors = Vec::new();
    for id in ids {
        let ev = host.wait_settled(id, &[target]).await;
        let d = delivery(&ev, target);
        assert_eq!(d["status"], "dead", "{d:#}");
        errors.push(d["last_error"].as_str().unwrap_or_default().to_owned());
    }
    errors
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_instance_serves_its_target_up_to_instance_reuse_times_and_never_after_a_trap() {
    let mut host = Host::new();
    // `count` returns "call N of this instance": N counts in the plugin's memory.
    let counting = |events: &str| {
        Target::misbehave("count")
            .events(&[events])
            .concurrency(1)
            .retry(1, 50, 200)
    };
    host.add_target("reused", &counting("reused.*").instance_reuse(3))
        .add_target("fresh", &counting("fresh.*").instance_reuse(1))
        .add_target("trapping", &counting("trapping.*").config("trap_at", "2"));
    host.start().await;

    let mut ids = std::collections::BTreeMap::<&str, Vec<String>>::new();
    for (target, n) in [("reused", 7), ("fresh", 3), ("trapping", 4)] {
        for i in 0..n {
            let id = host.enqueue(&format!("{target}.event"), json!({ "i": i })).await;
            ids.entry(target).or_default().push(id);
        }
    }

    let call = |n: u32| format!("permanent failure: misbehave: call {n} of this instance");
    // One at a time: an instance serves three deliveries, then a fresh one takes over.
    let mut reused = last_errors(&host, &ids["reused"], "reused").await;
    reused.sort();
    let want: Vec<String> = [1, 1, 1, 2, 2, 3, 3].into_iter().map(call).collect();
    assert_eq!(reused, want, "7 deliveries, instance_reuse = 3");

    // `instance_reuse = 1`: every attempt starts afresh.
    let fresh = last_errors(&host, &ids["fresh"], "fresh").await;
    assert_eq!(fresh, vec![call(1); 3], "instance_reuse = 1");

    // A trap at the second call: the next delivery gets a fresh instance (call 1 again),
    // never the trapped one.
    let trapping = last_errors(&host, &ids["trapping"], "trapping").await;
    let firsts = trapping.iter().filter(|e| **e == call(1)).count();
    let traps = trapping
        .iter()
        .filter(|e| e.contains("trap at call 2 of this instance"))
        .count();
    assert_eq!((firsts, traps), (2, 2), "{trapping:#?}");
    assert_healthy(&host).await;
}
