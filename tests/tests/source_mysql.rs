//! A MariaDB/MySQL source in its own database: the PHP example's orders reach every target
//! once and every outbox row ends `done`.

use std::collections::BTreeSet;

use testkit::sources::{TempDb, eventually, run_php_producer};
use testkit::{Host, Receiver, Target, default_timeout};

const ORDERS: usize = 200;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn php_orders_in_mariadb_reach_every_target_and_rows_end_done() {
    let db = TempDb::mariadb("outboxd_src_my");
    let (dsn, user) = db.pdo();
    run_php_producer(0, &dsn, Some(user)).await;

    let rx = Receiver::start().await;
    let mut host = Host::new();
    for (name, events) in [
        ("crm", &["order.*"][..]),
        ("analytics", &["*"][..]),
        ("billing", &["order.created"][..]),
    ] {
        host.add_target(name, &Target::webhook(&rx.url(&format!("/{name}"))).events(events));
    }
    host.append_config_raw(&format!(
        "[[sources]]\nname = \"shop\"\nkind = \"mysql\"\nurl = \"{}\"\n[sources.columns]\ncreated_at = \"created_at\"\n",
        db.url()
    ));
    host.start().await;

    tokio::join!(
        run_php_producer(ORDERS / 2, &dsn, Some(user)),
        run_php_producer(ORDERS / 2, &dsn, Some(user))
    );
    for path in ["/crm", "/analytics", "/billing"] {
        rx.wait_for(path, ORDERS, default_timeout())
            .await
            .unwrap_or_else(|e| panic!("{path}: {e}\n{}", host.stderr_tail(40)));
        let ids: BTreeSet<i64> = rx
            .requests_at(path)
            .iter()
            .map(|r| r.json()["data"]["order_id"].as_i64().unwrap())
            .collect();
        assert_eq!(ids, (1..=ORDERS as i64).collect(), "{path}");
        assert_eq!(rx.count_at(path), ORDERS, "{path}: no order twice");
    }
    let all_done = vec![vec!["done".to_owned(), ORDERS.to_string()]];
    eventually("every outbox row done", || {
        let rows = db.query("SELECT status, count(*) FROM outbox GROUP BY status");
        (rows == all_done, format!("{rows:?}"))
    })
    .await;
    let (_, sources) = host.get_json("/v1/sources").await;
    assert_eq!(sources[0]["kind"], "mysql", "{sources:#}");
    assert_eq!(sources[0]["rows_relayed"], ORDERS as u64, "{sources:#}");
    host.stop().await;
}
