//! The PHP example on SQLite: the application writes orders and their outbox rows in one
//! transaction of its own `app.db` while outboxd runs; every order reaches crm, analytics
//! and billing once, and every outbox row ends `done`.

use testkit::database::sqlite_rows;
use testkit::sources::{
    Source, expect_every_order_once, expect_scheduled_row_waits, run_php_producer, run_two_php_producers,
    sqlite_outbox_with,
};
use testkit::{Host, Receiver, Target, default_timeout, eventually, source_entry};

const ORDERS: usize = 200;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn php_orders_in_sqlite_reach_every_target_and_rows_end_done() {
    let rx = Receiver::start().await;
    let mut host = Host::new();
    host.add_webhooks(
        &rx,
        &[
            ("crm", &["order.*", "customer.*"]),
            ("analytics", &["*"]),
            ("billing", &["order.created", "order.paid", "invoice.*"]),
        ],
    );
    let app_db = host.dir().join("app.db");
    let dsn = format!("sqlite:{}", app_db.display());
    // The application's schema exists before outboxd starts (0 orders: schema only).
    run_php_producer(0, &dsn, None).await;
    host.add_source(
        &Source::sqlite("shop", &app_db)
            .set("schema", "simple")
            .column("created_at", "created_at"),
    );
    host.start().await;

    // Two producers at once, as two PHP requests would be.
    run_two_php_producers(ORDERS, &dsn, None).await;
    expect_every_order_once(&rx, &host, &["/crm", "/analytics", "/billing"], ORDERS).await;

    let all_done = vec![vec!["done".to_owned(), ORDERS.to_string()]];
    eventually("every outbox row done", || {
        let statuses = sqlite_rows(&app_db, "SELECT status, count(*) FROM outbox GROUP BY status");
        (statuses == all_done, format!("{statuses:?}"))
    })
    .await;
    let journal = sqlite_rows(&app_db, "PRAGMA journal_mode");
    assert_eq!(journal, [["wal"]], "the application's journal mode is untouched");
    assert_eq!(host.count_rows("events"), ORDERS as i64);

    let sources = host
        .wait_for_sources(default_timeout(), |s| s[0]["rows_relayed"] == ORDERS as u64)
        .await;
    let shop = &sources[0];
    assert_eq!(shop["name"], "shop", "{sources:#}");
    assert_eq!(shop["kind"], "sqlite");
    assert_eq!(shop["table"], "outbox");
    assert_eq!(shop["schema"], "simple");
    assert_eq!(shop["rows_relayed"], ORDERS as u64, "{sources:#}");
    assert_eq!(shop["rows_failed"], 0, "{sources:#}");
    assert_eq!(shop["state"], "relaying", "{sources:#}");
    assert!(shop["last_error"].is_null(), "{sources:#}");
    assert!(shop["last_poll_at"].is_string(), "{sources:#}");

    let cli = host.run_cli(&["source", "status", "--url", &host.url("")]).await;
    assert!(cli.status.success(), "{cli}");
    let line = cli
        .stdout
        .lines()
        .find(|l| l.starts_with("shop "))
        .unwrap_or_else(|| panic!("no line for shop: {cli}"));
    assert!(
        line.contains("sqlite") && line.contains(&format!(" {ORDERS} ")),
        "{cli}"
    );
    host.stop().await;
}

/// A `deliver_at` column: a row scheduled a few seconds ahead (written as PHP's
/// `gmdate('Y-m-d H:i:s', …)` would) is relayed at once but delivered at its time; a row
/// without one is delivered at once; a value that is no date/time is a bad row, marked failed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_row_with_a_future_deliver_at_waits_then_is_delivered() {
    let rx = Receiver::start().await;
    let mut host = Host::new();
    host.add_target("sink", &Target::webhook(&rx.url("/sink")));
    let (app_db, app) = sqlite_outbox_with(&mut host, "send_at", "deliver_at");
    host.start().await;

    app.execute_batch(
        "BEGIN;
         INSERT INTO outbox (id, event_type, payload, send_at)
             VALUES (1, 'cart.reminder', '{\"row\":1}', strftime('%Y-%m-%d %H:%M:%S', 'now', '+4 seconds'));
         INSERT INTO outbox (id, event_type, payload) VALUES (2, 'order.created', '{\"row\":2}');
         INSERT INTO outbox (id, event_type, payload, send_at) VALUES (3, 'cart.reminder', '{\"row\":3}', 'next tuesday');
         COMMIT;",
    )
    .expect("rows");
    let due_ms: i64 = app
        .query_row("SELECT unixepoch(send_at) * 1000 FROM outbox WHERE id = 1", [], |r| {
            r.get(0)
        })
        .expect("due");
    // Relayed (row 1 too: its event is stored, its delivery waits), and row 3 refused.
    let sources = host
        .wait_for_sources(default_timeout(), |s| {
            source_entry(s, "shop")["rows_relayed"] == 2 && source_entry(s, "shop")["rows_failed"] == 1
        })
        .await;
    let shop = source_entry(&sources, "shop");
    let bad = shop["last_bad_row"]["message"].as_str().unwrap_or_default();
    assert!(
        bad.contains("3: the deliver_at column holds `next tuesday`, which is not a date/time"),
        "{shop:#}"
    );
    expect_scheduled_row_waits(&rx, &host, "/sink", due_ms).await;
    let statuses = testkit::database::sqlite_rows(&app_db, "SELECT id, status FROM outbox ORDER BY id");
    assert_eq!(statuses, [["1", "done"], ["2", "done"], ["3", "failed"]]);
    assert_eq!(host.count_rows("events"), 2);
}
