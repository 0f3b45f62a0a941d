//! The dashboard in a real browser: Debian's headless Chromium, driven by playwright-core
//! (`tests/browser/dashboard.mjs`). outboxd runs with API tokens and the three demo targets;
//! `billing` refuses the event (422 `{"error":"upstream exploded"}`) so its delivery is dead.
//! The browser signs in with an admin token, sees the three targets, finds the dead delivery
//! with the receiver's answer, replays it with the button (confirming), and sees it delivered,
//! the refused attempt's answer in the event's history; then it cancels a second event's dead
//! delivery from the event view (confirming) and sees it `cancelled`, and sees a third event's
//! payload noted as erased. Last, it filters the dead letters to a target with 10,000 of them,
//! replays all matching (a bulk replay job) and watches the job's progress bar reach the end,
//! with the summary. The screenshots are kept in `target/test-artifacts/dashboard.png`,
//! `dashboard-replay-running.png` (when the page saw the job running) and
//! `dashboard-replay-done.png`.
//!
//! Needs `/usr/bin/chromium` (or `CHROMIUM`), node, and `tests/browser/node_modules`
//! (`cargo xtask test` runs `npm ci` there and sets `OUTBOXD_TEST_BROWSER_DIR`).

use serde_json::{Value, json};
use testkit::browser::Browser;
use testkit::{Behavior, Target, default_timeout, target_count};

const ADMIN: &str = "admin-token-0123456789";
/// Dead deliveries the dashboard replays as a job.
const BULK: usize = 10_000;
/// What billing's receiver answers at first.
const ANSWER: &str = r#"{"error":"upstream exploded"}"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_replays_a_dead_delivery_in_headless_chromium() {
    let browser = Browser::locate();

    let (rx, mut host) = testkit::demo(Behavior::ok().respond_with(|_| (422, ANSWER.to_owned()))).await;
    host.add_api_token("ops", ADMIN, &["admin"]).set_api_token(ADMIN);
    // Every attempt fails for good: 10,000 dead deliveries for the bulk replay.
    host.add_target(
        "bulk",
        &Target::misbehave("permanent").events(&["bulk.*"]).concurrency(32),
    );
    host.start().await;

    let id = host.enqueue("order.created", json!({"order_id": 1001})).await;
    // A second event, whose dead delivery the dashboard cancels.
    let to_cancel = host.enqueue("order.created", json!({"order_id": 1002})).await;
    // A third, whose payload is erased once its deliveries are final.
    let to_erase = host.enqueue("order.created", json!({"order_id": 1003})).await;
    host.wait_for_targets(default_timeout(), |targets| {
        target_count(targets, "billing", "dead") == 3
            && target_count(targets, "crm", "delivered") == 3
            && target_count(targets, "analytics", "delivered") == 3
    })
    .await;
    for chunk in 0..BULK / 1_000 {
        let batch: Vec<Value> = (0..1_000)
            .map(|i| json!({"type": "bulk.created", "payload": {"n": chunk * 1_000 + i}}))
            .collect();
        host.enqueue_batch(batch).await;
    }
    host.wait_for_targets(default_timeout() * 4, |targets| {
        target_count(targets, "bulk", "dead") == BULK as u64
    })
    .await;
    let (status, erased) = host.delete(&format!("/v1/events/{to_erase}/payload")).await;
    assert_eq!(status, 200, "{erased}");
    // The receiver is fixed; the operator replays from the dashboard.
    rx.behave("/billing", Behavior::ok());

    let artifacts_dir = Browser::artifacts_dir();
    let screenshot = artifacts_dir.join("dashboard.png");
    let _ = std::fs::remove_file(&screenshot);
    let stdout = browser
        .run(
            "dashboard.mjs",
            &[
                ("DASHBOARD_URL", host.url("/").into()),
                ("DASHBOARD_TOKEN", ADMIN.into()),
                ("SCREENSHOT", screenshot.clone().into()),
                ("CANCEL_EVENT", to_cancel.clone().into()),
                ("ERASED_EVENT", to_erase.clone().into()),
                ("BULK_TARGET", "bulk".into()),
                ("TARGETS", "4".into()),
            ],
            default_timeout(),
        )
        .await;
    assert!(stdout.contains("targets: analytics,billing,bulk,crm"), "{stdout}");
    assert!(stdout.contains(&format!("dead: billing {id}")), "{stdout}");
    assert!(
        stdout.contains(&format!("dead response: HTTP 422: {ANSWER}")),
        "the dead letter shows the receiver's answer: {stdout}"
    );
    assert!(stdout.contains("confirm: Replay 1 selected delivery?"), "{stdout}");
    assert!(stdout.contains("result: Replayed 1 delivery"), "{stdout}");
    assert!(stdout.contains("billing=delivered"), "{stdout}");
    let responses = stdout
        .lines()
        .find(|l| l.starts_with("responses: "))
        .unwrap_or_default();
    assert!(
        responses.contains(&format!("HTTP 422: {ANSWER}")) && responses.contains("HTTP 200"),
        "the event's history shows each attempt's answer: {stdout}"
    );
    assert!(
        stdout.contains("offsite requests: 0"),
        "the page loads nothing from elsewhere: {stdout}"
    );
    assert!(stdout.contains("cancel confirm: Really cancel 1 delivery?"), "{stdout}");
    assert!(stdout.contains("cancel result: Cancelled 1 delivery"), "{stdout}");
    assert!(
        stdout.contains("cancelled event: analytics=delivered,billing=cancelled,crm=delivered"),
        "{stdout}"
    );
    assert!(
        stdout.contains("cancel button left: 0"),
        "nothing left to cancel: {stdout}"
    );
    assert!(screenshot.is_file(), "no screenshot at {}", screenshot.display());

    // The bulk replay: a job, whose progress bar the page showed reaching the end.
    assert!(
        stdout.contains("bulk confirm: Replay every failed delivery matching target=bulk?"),
        "{stdout}"
    );
    assert!(
        stdout.contains(&format!("bulk result: Replay job 1 started: {BULK} deliveries match")),
        "{stdout}"
    );
    let progress: Vec<u64> = stdout
        .lines()
        .find_map(|l| l.strip_prefix("bulk progress: "))
        .unwrap_or_default()
        .split(',')
        .filter_map(|v| v.parse().ok())
        .collect();
    assert_eq!(
        progress.last(),
        Some(&(BULK as u64)),
        "the bar reached the end: {stdout}"
    );
    assert!(
        progress.windows(2).all(|w| w[0] <= w[1]),
        "the bar only moves forward: {progress:?}"
    );
    assert!(stdout.contains(&format!("bulk max: {BULK}")), "{stdout}");
    assert!(
        stdout.contains(&format!("bulk summary: done: replayed {BULK} of {BULK}")),
        "the summary at the end: {stdout}"
    );
    assert!(
        stdout.contains("bulk cancel buttons: 0"),
        "a finished job cannot be cancelled: {stdout}"
    );
    let done = artifacts_dir.join("dashboard-replay-done.png");
    assert!(done.is_file(), "no screenshot at {}", done.display());
    let job = host.wait_for_replay(1, default_timeout()).await;
    assert_eq!(
        (&job["status"], &job["replayed"]),
        (&json!("done"), &json!(BULK)),
        "{job}"
    );

    // The replay really happened: billing got the event a second time, and it is delivered.
    let event = host.get_event(&id).await;
    assert_eq!(testkit::status_of(&event, "billing"), Some("delivered"), "{event}");
    assert_eq!(
        rx.requests_at("/billing").len(),
        4,
        "three 422s, then the replayed delivery"
    );
    let cancelled = host.get_event(&to_cancel).await;
    assert_eq!(
        testkit::status_of(&cancelled, "billing"),
        Some("cancelled"),
        "{cancelled}"
    );
}
