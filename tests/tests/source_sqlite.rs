//! The PHP example on SQLite: the application writes orders and their outbox rows in one
//! transaction of its own `app.db` while outboxd runs; every order reaches crm, analytics
//! and billing once, and every outbox row ends `done`.

use testkit::database::sqlite_rows;
use testkit::sources::{Source, expect_every_order_once, run_php_producer, run_two_php_producers};
use testkit::{Host, Receiver, default_timeout, eventually};

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
