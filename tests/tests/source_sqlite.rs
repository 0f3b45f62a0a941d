//! The PHP example on SQLite: the application writes orders and their outbox rows in one
//! transaction of its own `app.db` while outboxd runs; every order reaches crm, analytics
//! and billing once, and every outbox row ends `done`.

use std::collections::BTreeSet;

use testkit::sources::{eventually, run_php_producer};
use testkit::{Host, Receiver, Target, default_timeout};

const ORDERS: usize = 200;

fn order_ids(rx: &Receiver, path: &str) -> BTreeSet<i64> {
    rx.requests_at(path)
        .iter()
        .map(|r| r.json()["data"]["order_id"].as_i64().expect("order_id in payload"))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn php_orders_in_sqlite_reach_every_target_and_rows_end_done() {
    let rx = Receiver::start().await;
    let mut host = Host::new();
    for (name, events) in [
        ("crm", &["order.*", "customer.*"][..]),
        ("analytics", &["*"][..]),
        ("billing", &["order.created", "order.paid", "invoice.*"][..]),
    ] {
        host.add_target(name, &Target::webhook(&rx.url(&format!("/{name}"))).events(events));
    }
    let app_db = host.dir().join("app.db");
    let dsn = format!("sqlite:{}", app_db.display());
    // The application's schema exists before outboxd starts (0 orders: schema only).
    run_php_producer(0, &dsn, None).await;
    host.append_config_raw(&format!(
        "[[sources]]\nname = \"shop\"\nkind = \"sqlite\"\npath = {:?}\nschema = \"simple\"\n\
         [sources.columns]\ncreated_at = \"created_at\"\n",
        app_db.display().to_string()
    ));
    host.start().await;

    // Two producers at once, as two PHP requests would be.
    tokio::join!(
        run_php_producer(ORDERS / 2, &dsn, None),
        run_php_producer(ORDERS / 2, &dsn, None)
    );

    for path in ["/crm", "/analytics", "/billing"] {
        rx.wait_for(path, ORDERS, default_timeout())
            .await
            .unwrap_or_else(|e| panic!("{path}: {e}\n{}", host.stderr_tail(40)));
    }
    let expected: BTreeSet<i64> = (1..=ORDERS as i64).collect();
    for path in ["/crm", "/analytics", "/billing"] {
        assert_eq!(order_ids(&rx, path), expected, "{path}: every order once");
        assert_eq!(rx.count_at(path), ORDERS, "{path}: no order twice");
    }

    let app = rusqlite::Connection::open(&app_db).expect("open app.db");
    eventually("every outbox row done", || {
        let statuses: Vec<(String, i64)> = app
            .prepare("SELECT status, count(*) FROM outbox GROUP BY status")
            .unwrap()
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        (
            statuses == vec![("done".to_owned(), ORDERS as i64)],
            format!("{statuses:?}"),
        )
    })
    .await;
    let journal: String = app.query_row("PRAGMA journal_mode", [], |r| r.get(0)).unwrap();
    assert_eq!(journal, "wal", "the application's journal mode is untouched");
    assert_eq!(host.count_rows("events"), ORDERS as i64);

    let deadline = tokio::time::Instant::now() + default_timeout();
    let sources = loop {
        let (status, sources) = host.get_json("/v1/sources").await;
        assert_eq!(status, 200, "{sources}");
        if sources[0]["rows_relayed"] == ORDERS as u64 || tokio::time::Instant::now() > deadline {
            break sources;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    };
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
