//! The dashboard's first screen, events page and sources panel in a real browser (Debian's
//! headless Chromium, driven by `tests/browser/charts.mjs`), under load: while the page is
//! open, producers post orders through the API and an application's SQLite outbox table is
//! relayed (a `[[sources]]` entry); `billing` fails the orders marked `poison` (500, three
//! attempts, then dead), the other targets take everything, some slowly.
//!
//! The browser sees the charts draw from real data (attempts, latency, backlog), searches an
//! event by its idempotency key, opens it and reads the receiver's answer in its history, and
//! sees the source relaying. Once everything is final, what the chart draws (the sum of its
//! bars) equals what `GET /v1/history` says and what the store holds: one delivered attempt
//! per delivered delivery, one failed attempt per dead one. Screenshots:
//! `target/test-artifacts/dashboard-charts.png`, `dashboard-events.png`,
//! `dashboard-sources.png` and `dashboard-full.png`.

use std::time::Duration;

use serde_json::{Value, json};
use testkit::browser::Browser;
use testkit::sources::Source;
use testkit::{Behavior, DEMO_TARGETS, default_timeout, target_count};

/// Orders posted through the API while the page is open, in batches.
const BATCHES: usize = 30;
const BATCH: usize = 10;
/// Every this many orders one is poison: billing refuses it.
const POISON_EVERY: usize = 25;
/// Rows the application writes into its outbox table meanwhile.
const SOURCE_ROWS: usize = 20;
/// What billing answers to a poison order.
const ANSWER: &str = r#"{"error":"the ledger is locked"}"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_charts_real_traffic_finds_an_event_and_shows_sources_in_chromium() {
    let browser = Browser::locate();

    let billing = Behavior::ok().respond_with(|r| {
        if String::from_utf8_lossy(&r.body).contains("\"poison\":true") {
            (500, ANSWER.to_owned())
        } else {
            (200, r#"{"billed":true}"#.to_owned())
        }
    });
    let (_rx, mut host) =
        testkit::demo_with(Behavior::ok().delay_fraction(0.2, Duration::from_millis(120)), billing).await;
    // The application's outbox table, relayed into outboxd.
    let app_db = host.dir().join("app.db");
    let app = rusqlite::Connection::open(&app_db).expect("open app db");
    app.execute_batch(
        "CREATE TABLE outbox (id INTEGER PRIMARY KEY AUTOINCREMENT, event_type TEXT NOT NULL,
                              payload TEXT NOT NULL, status TEXT NOT NULL DEFAULT 'pending');",
    )
    .expect("create the outbox table");
    drop(app);
    host.add_source(&Source::sqlite("shop", &app_db).set("poll_interval_ms", 100));
    host.start().await;

    // The key of an order billing refuses: the browser searches for it.
    let poison_key = format!("order-{}", POISON_EVERY * 3);
    let load = {
        let url = host.url("/v1/events");
        let app_db = app_db.clone();
        tokio::spawn(async move {
            let client = reqwest::Client::new();
            let app = rusqlite::Connection::open(&app_db).expect("open app db");
            for b in 0..BATCHES {
                let events: Vec<Value> = (0..BATCH)
                    .map(|i| {
                        let n = b * BATCH + i;
                        json!({
                            "type": "order.created",
                            "idempotency_key": format!("order-{n}"),
                            "payload": {"order_id": n, "poison": n.is_multiple_of(POISON_EVERY)},
                        })
                    })
                    .collect();
                let res = client.post(&url).json(&events).send().await.expect("post a batch");
                assert_eq!(res.status(), 202, "{}", res.text().await.unwrap_or_default());
                if b < SOURCE_ROWS {
                    app.execute(
                        "INSERT INTO outbox (event_type, payload) VALUES ('order.paid', ?1)",
                        [format!(r#"{{"order_id": {b}, "via": "shop"}}"#)],
                    )
                    .expect("insert an outbox row");
                }
                tokio::time::sleep(Duration::from_millis(400)).await;
            }
        })
    };
    let orders = BATCHES * BATCH;
    let deliveries = (orders + SOURCE_ROWS) * DEMO_TARGETS.len();
    let poisoned = orders.div_ceil(POISON_EVERY);

    let artifacts_dir = Browser::artifacts_dir();
    for name in ["charts", "events", "sources", "full"] {
        let _ = std::fs::remove_file(artifacts_dir.join(format!("dashboard-{name}.png")));
    }
    let stdout = browser
        .run(
            "charts.mjs",
            &[
                ("DASHBOARD_URL", host.url("/").into()),
                ("ARTIFACTS", artifacts_dir.clone().into()),
                ("SEARCH_KEY", poison_key.clone().into()),
                ("EXPECTED_DELIVERIES", deliveries.to_string().into()),
            ],
            default_timeout() * 2,
        )
        .await;
    load.await.expect("the load ran");

    let line = |prefix: &str| -> String {
        stdout
            .lines()
            .find_map(|l| l.strip_prefix(prefix))
            .unwrap_or_else(|| panic!("no `{prefix}` line: {stdout}"))
            .to_owned()
    };
    // Under load, the chart drew attempts of each kind.
    let under_load = line("under load: ");
    assert!(!under_load.contains("delivered=0 "), "{under_load}");

    // Settled: the drawn bars, the API's history and the store agree.
    let targets = host.get_json("/v1/targets").await.1;
    let delivered: u64 = DEMO_TARGETS
        .iter()
        .map(|t| target_count(&targets, t, "delivered"))
        .sum();
    let dead = target_count(&targets, "billing", "dead");
    assert_eq!(dead, poisoned as u64, "{targets:#}");
    assert_eq!(delivered + dead, deliveries as u64, "{targets:#}");
    let drawn = line("drawn: ");
    let history = line("history: ");
    assert_eq!(drawn, history, "the chart draws what the API says");
    assert_eq!(
        drawn,
        format!("delivered={delivered} retried={} failed={dead}", dead * 2),
        "one delivered attempt per delivered delivery; two retries and one failure per dead one"
    );
    assert!(line("latency points: ").parse::<u32>().unwrap() >= 1, "{stdout}");
    assert!(line("backlog series: ").contains("billing"), "{stdout}");

    // The search found the poison order by its key; its history shows billing's answer.
    let found = line("search: ");
    let (count, id) = found.split_once(' ').expect("count and id");
    assert_eq!(count, "1", "{found}");
    let event = host.get_json(&format!("/v1/events/{id}")).await.1;
    assert_eq!(event["idempotency_key"], poison_key.as_str(), "{event}");
    let answers = line("answers: ");
    assert_eq!(
        answers.matches(&format!("HTTP 500: {ANSWER}")).count(),
        3,
        "each of the three attempts shows the receiver's answer: {answers}"
    );

    // The sources panel shows the relay.
    let source = line("source: ");
    assert!(source.starts_with("shop relaying "), "{source}");
    assert_eq!(source, format!("shop relaying {SOURCE_ROWS}"), "{source}");

    assert!(stdout.contains("offsite requests: 0"), "{stdout}");
    assert!(stdout.contains("page errors: 0"), "{stdout}");
    for name in ["charts", "events", "sources", "full"] {
        let shot = artifacts_dir.join(format!("dashboard-{name}.png"));
        assert!(shot.is_file(), "no screenshot at {}", shot.display());
    }
}
