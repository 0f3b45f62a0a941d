//! A MariaDB/MySQL source in its own database: the PHP example's orders reach every target
//! once and every outbox row ends `done`.

use testkit::sources::{
    SHOP_TARGETS, Source, TempDb, expect_every_order_once, expect_scheduled_row_waits, run_php_producer,
    run_two_php_producers,
};
use testkit::{Host, Receiver, Target};

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

/// A `deliver_at` column of type `DATETIME`, written in UTC as PHP's `gmdate()` would: the row
/// scheduled a few seconds ahead waits, the other is delivered at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_row_with_a_future_deliver_at_waits_then_is_delivered() {
    let db = TempDb::mariadb("outboxd_src_sched");
    db.exec(
        "CREATE TABLE outbox (id BIGINT AUTO_INCREMENT PRIMARY KEY, event_type VARCHAR(255) NOT NULL,
                              payload JSON NOT NULL, status VARCHAR(16) NOT NULL DEFAULT 'pending',
                              deliver_at DATETIME NULL)",
    );
    let rx = Receiver::start().await;
    let mut host = Host::new();
    host.add_target("sink", &Target::webhook(&rx.url("/sink")));
    host.add_source(
        &Source::mysql("shop", &db.url())
            .set("poll_interval_ms", 20)
            .column("deliver_at", "deliver_at"),
    );
    host.start().await;
    db.exec(
        "START TRANSACTION;
         INSERT INTO outbox (event_type, payload, deliver_at) VALUES ('cart.reminder', '{\"row\":1}', UTC_TIMESTAMP() + INTERVAL 4 SECOND);
         INSERT INTO outbox (event_type, payload) VALUES ('order.created', '{\"row\":2}');
         COMMIT;",
    );
    let due_ms = db.count(
        "SELECT TIMESTAMPDIFF(SECOND, '1970-01-01 00:00:00', deliver_at) * 1000 FROM outbox WHERE deliver_at IS NOT NULL",
    );
    expect_scheduled_row_waits(&rx, &host, "/sink", due_ms).await;
    db.expect_outbox_done(2).await;
    host.stop().await;
}
