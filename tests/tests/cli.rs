//! The command line: `enqueue` and `status` next to a running `serve`, and clean signal handling.

use std::time::{Duration, Instant};

use serde_json::json;
use testkit::{Behavior, Host, Receiver, Target, delivery, scaled};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn enqueue_while_serving_is_delivered_and_sigterm_exits_zero() {
    let rx = Receiver::start().await;
    let mut host = Host::new();
    host.add_target("crm", &Target::webhook(&rx.url("/crm")).events(&["order.*"]));
    host.start().await;

    let out = host
        .run_cli(&[
            "enqueue",
            "--type",
            "order.created",
            "--payload",
            r#"{"order_id": 77, "note": "from the CLI"}"#,
            "--idempotency-key",
            "cli-77",
        ])
        .await;
    assert!(out.status.success(), "outboxd enqueue failed:\n{out}");
    let lines: Vec<&str> = out.stdout.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(lines.len(), 1, "enqueue prints the event id on one line:\n{out}");
    let id = lines[0].trim().to_owned();

    let ev = host.wait_delivered(&id, &["crm"]).await;
    assert_eq!(ev["type"], "order.created", "{ev:#}");
    assert_eq!(ev["payload"], json!({"order_id": 77, "note": "from the CLI"}), "{ev:#}");
    assert_eq!(ev["idempotency_key"], "cli-77", "{ev:#}");
    let reqs = rx.expect_requests("/crm", 1).await;
    assert_eq!(reqs[0].event_id(), Some(id.as_str()), "{}", rx.describe());
    assert_eq!(
        reqs[0].idempotency_key(),
        delivery(&ev, "crm")["idempotency_key"].as_str()
    );

    let out = host.run_cli(&["status", &id]).await;
    assert!(out.status.success(), "outboxd status ID failed:\n{out}");
    assert!(
        out.stdout.contains("crm") && out.stdout.contains("delivered"),
        "status of the event should name the target and its status:\n{out}"
    );
    let out = host.run_cli(&["status"]).await;
    assert!(out.status.success(), "outboxd status failed:\n{out}");
    assert!(out.stdout.contains("crm"), "status should list the targets:\n{out}");

    let status = host.sigterm().await;
    assert_eq!(status.code(), Some(0), "exit after SIGTERM: {status}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_with_a_hung_delivery_exits_zero_and_the_delivery_resumes() {
    let rx = Receiver::builder()
        .path("/slow", Behavior::ok().hang_first(1))
        .start()
        .await;
    let mut host = Host::new();
    let grace_ms = 1000;
    host.set_config("shutdown_grace_ms", grace_ms);
    host.add_target(
        "slow",
        &Target::webhook(&rx.url("/slow")).timeout_ms(60_000).retry(5, 50, 200),
    );
    host.start().await;

    let id = host.enqueue("order.created", json!({"order_id": 8})).await;
    rx.expect_requests("/slow", 1).await;

    let t0 = Instant::now();
    let status = host.sigterm().await;
    let took = t0.elapsed();
    assert_eq!(status.code(), Some(0), "exit after SIGTERM: {status}");
    assert!(
        took < Duration::from_millis(grace_ms as u64) + scaled(Duration::from_secs(8)),
        "shutdown took {took:?} with shutdown_grace_ms = {grace_ms}"
    );

    // The cut-off delivery is not lost: after a restart it is delivered, with the same key.
    host.restart().await;
    let ev = host.wait_delivered(&id, &["slow"]).await;
    let reqs = rx.requests_at("/slow");
    assert!(reqs.len() >= 2, "{}", rx.describe());
    let key = delivery(&ev, "slow")["idempotency_key"].as_str();
    assert!(reqs.iter().all(|r| r.idempotency_key() == key), "{}", rx.describe());
    host.stop().await;
}

/// Issue 26's acceptance: a stop during an attempt lets that attempt finish inside
/// `shutdown_grace_ms`, records it `delivered`, and never sends it again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_during_a_3_second_attempt_lets_it_finish_and_records_it_delivered_once() {
    let rx = Receiver::builder()
        .path("/slow", Behavior::ok().delay(Duration::from_secs(3)))
        .start()
        .await;
    let mut host = Host::new();
    host.set_config("shutdown_grace_ms", 20_000);
    host.add_target(
        "slow",
        &Target::webhook(&rx.url("/slow")).timeout_ms(30_000).retry(5, 50, 200),
    );
    host.start().await;

    let id = host.enqueue("order.created", json!({"order_id": 26})).await;
    rx.expect_requests("/slow", 1).await;
    let t0 = Instant::now();
    let status = host.sigterm().await;
    let took = t0.elapsed();
    assert_eq!(status.code(), Some(0), "exit after SIGTERM: {status}");
    assert!(
        took >= Duration::from_secs(2),
        "the stop waited for the attempt (took {took:?})"
    );
    let rows = host.sql(&format!(
        "SELECT d.status, d.attempts, (SELECT COUNT(*) FROM attempts a WHERE a.delivery_id = d.id), \
         (SELECT MIN(outcome) FROM attempts a WHERE a.delivery_id = d.id) \
         FROM deliveries d WHERE d.event_id = '{id}'"
    ));
    assert_eq!(rows, [["delivered", "1", "1", "delivered"]], "after the stop");

    // Started again, the host has nothing left to send.
    host.restart().await;
    let ev = host.wait_delivered(&id, &["slow"]).await;
    assert_eq!(delivery(&ev, "slow")["attempts"], 1, "{ev}");
    rx.expect_no_more_at("/slow", 1, Duration::from_secs(1)).await;
    host.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigint_exits_zero() {
    let mut host = Host::new();
    host.start().await;
    let (status, body) = host
        .healthz(scaled(Duration::from_secs(5)))
        .await
        .expect("/healthz answers");
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["status"], "ok", "{body}");
    let status = host.sigint().await;
    assert_eq!(status.code(), Some(0), "exit after SIGINT: {status}");
}

#[test]
fn version_names_the_commit() {
    let out = std::process::Command::new(testkit::artifacts::outboxd_bin())
        .arg("--version")
        .output()
        .expect("run outboxd --version");
    assert!(out.status.success(), "{out:?}");
    let head = std::process::Command::new("git")
        .args(["rev-parse", "--short=12", "HEAD"])
        .current_dir(testkit::artifacts::workspace_root())
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_else(|| "unknown".to_owned());
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        format!("outboxd {} (commit {head})", env!("CARGO_PKG_VERSION")),
    );
}

#[test]
fn completions_and_the_man_page_come_from_the_binary() {
    let run = |args: &[&str]| {
        std::process::Command::new(testkit::artifacts::outboxd_bin())
            .args(args)
            .output()
            .expect("run outboxd")
    };
    let out = run(&["completions", "bash"]);
    assert!(out.status.success(), "{out:?}");
    let script = String::from_utf8_lossy(&out.stdout);
    assert!(script.contains("complete -F _outboxd"), "{script}");
    assert!(script.contains("enqueue"), "{script}");
    let out = run(&["completions", "tcsh"]);
    assert_eq!(out.status.code(), Some(2), "an unknown shell is a usage error: {out:?}");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("possible values"),
        "{out:?}"
    );
    let out = run(&["man"]);
    assert!(out.status.success(), "{out:?}");
    let page = String::from_utf8_lossy(&out.stdout);
    assert!(page.contains(".TH outboxd 1"), "{page}");
    assert!(page.contains("completions"), "{page}");
}
