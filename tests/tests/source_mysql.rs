//! A MariaDB/MySQL source in its own database: the PHP example's orders reach every target
//! once and every outbox row ends `done`.

use testkit::sources::{
    SHOP_TARGETS, Source, TempDb, expect_every_order_once, run_php_producer, run_two_php_producers,
};
use testkit::{Host, Receiver};

const ORDERS: usize = 200;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn php_orders_in_mariadb_reach_every_target_and_rows_end_done() {
    let db = TempDb::mariadb("outboxd_src_my");
    let (dsn, user) = db.pdo();
    run_php_producer(0, &dsn, Some(user)).await;

    let rx = Receiver::start().await;
    let mut host = Host::new();
    host.add_webhooks(&rx, SHOP_TARGETS);
    host.add_source(&Source::mysql("shop", &db.url()).column("created_at", "created_at"));
    host.start().await;

    run_two_php_producers(ORDERS, &dsn, Some(user)).await;
    expect_every_order_once(&rx, &host, &["/crm", "/analytics", "/billing"], ORDERS).await;
    db.expect_outbox_done(ORDERS).await;
    let (_, sources) = host.get_json("/v1/sources").await;
    assert_eq!(sources[0]["kind"], "mysql", "{sources:#}");
    assert_eq!(sources[0]["rows_relayed"], ORDERS as u64, "{sources:#}");
    host.stop().await;
}
