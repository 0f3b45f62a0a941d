//! PostgreSQL sources, each test in its own database: the PHP example's `simple` table woken
//! by `LISTEN`/`NOTIFY` (the trigger docs/sources.md shows), and a Debezium-shaped table whose
//! events keep their per-`aggregateid` order to an `ordered = true` target.

use std::collections::BTreeMap;

use testkit::sources::{
    SHOP_TARGETS, Source, TempDb, expect_every_order_once, expect_scheduled_row_waits, php_example_dir,
    run_php_producer, run_two_php_producers,
};
use testkit::{Behavior, Host, Receiver, Target, default_timeout, eventually, find_named, source_entry};

const ORDERS: usize = 200;

/// The trigger from docs/sources.md: one NOTIFY per inserting statement.
const NOTIFY_TRIGGER: &str = "
CREATE FUNCTION outbox_notify() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN PERFORM pg_notify('outbox', ''); RETURN NULL; END $$;
CREATE TRIGGER outbox_notify AFTER INSERT ON outbox
    FOR EACH STATEMENT EXECUTE FUNCTION outbox_notify();";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn php_orders_in_postgres_reach_every_target_woken_by_notify() {
    let db = TempDb::postgres("outboxd_src_pg");
    let (dsn, user) = db.pdo();
    run_php_producer(0, &dsn, Some(user)).await;
    db.exec(NOTIFY_TRIGGER);

    let rx = Receiver::start().await;
    let mut host = Host::new();
    host.add_webhooks(&rx, SHOP_TARGETS);
    // Polling once a minute: only NOTIFY can make the relay this quick.
    host.add_source(
        &Source::postgres("shop", &db.url())
            .set("notify_channel", "outbox")
            .set("poll_interval_ms", 60_000)
            .column("created_at", "created_at"),
    );
    host.start().await;
    host.wait_for_sources(default_timeout(), |s| {
        find_named(s, "shop").is_some_and(|s| s["state"] == "relaying")
    })
    .await;

    run_two_php_producers(ORDERS, &dsn, Some(user)).await;
    expect_every_order_once(&rx, &host, &["/crm", "/analytics", "/billing"], ORDERS).await;
    db.expect_outbox_done(ORDERS).await;
    let sources = host
        .wait_for_sources(default_timeout(), |s| {
            find_named(s, "shop").is_some_and(|s| s["rows_relayed"] == ORDERS as u64)
        })
        .await;
    let s = source_entry(&sources, "shop");
    assert_eq!(s["kind"], "postgres", "{s:#}");
    assert!(s["lag_ms"].is_i64(), "{s:#}");
    assert!(php_example_dir().join("schema.pgsql.sql").is_file());
    host.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn debezium_table_keeps_per_aggregate_order_to_an_ordered_target() {
    const AGGREGATES: i64 = 4;
    const PER_AGGREGATE: i64 = 25;
    let db = TempDb::postgres("outboxd_src_dbz");
    db.exec(
        "CREATE TABLE outboxevent (
            id            uuid PRIMARY KEY,
            seq           bigserial NOT NULL,
            aggregatetype varchar(255) NOT NULL,
            aggregateid   varchar(255) NOT NULL,
            type          varchar(255) NOT NULL,
            payload       jsonb
        )",
    );
    // Interleaved aggregates, in several transactions, before and after outboxd starts.
    let insert = |from: i64, to: i64| {
        db.exec(&format!(
            "INSERT INTO outboxevent (id, aggregatetype, aggregateid, type, payload)
             SELECT gen_random_uuid(), 'order', 'order-' || (i % {AGGREGATES}), 'order.updated',
                    jsonb_build_object('agg', 'order-' || (i % {AGGREGATES}), 'n', i / {AGGREGATES})
             FROM generate_series({from}, {to}) AS i ORDER BY i"
        ))
    };
    insert(0, 39);

    let rx = Receiver::builder()
        .default_behavior(Behavior::ok().fail_fraction(0.3, 503).seed(11))
        .start()
        .await;
    let mut host = Host::new();
    host.add_target(
        "ledger",
        &Target::webhook(&rx.url("/ledger"))
            .ordered(true)
            .concurrency(8)
            .fast_retry(50),
    );
    host.add_source(
        &Source::postgres("orders", &db.url())
            .set("table", "public.outboxevent")
            .set("schema", "debezium")
            .set("order_by", "seq")
            .set("batch_size", 7)
            .set("poll_interval_ms", 20),
    );
    host.start().await;
    insert(40, 69);
    insert(70, AGGREGATES * PER_AGGREGATE - 1);

    let total = (AGGREGATES * PER_AGGREGATE) as usize;
    rx.wait_until(default_timeout(), |reqs| {
        reqs.iter().filter(|r| r.succeeded()).count() >= total
    })
    .await
    .unwrap_or_else(|e| panic!("{e}\n{}", host.stderr_tail(40)));

    let mut delivered: BTreeMap<String, Vec<i64>> = BTreeMap::new();
    for r in rx.requests_at("/ledger") {
        if r.succeeded() {
            let data = &r.json()["data"];
            delivered
                .entry(data["agg"].as_str().unwrap().to_owned())
                .or_default()
                .push(data["n"].as_i64().unwrap());
        }
    }
    assert_eq!(delivered.len(), AGGREGATES as usize);
    for (agg, ns) in &delivered {
        assert_eq!(
            ns,
            &(0..PER_AGGREGATE).collect::<Vec<_>>(),
            "{agg}: delivered out of the order the application wrote"
        );
    }
    eventually("relayed rows are deleted", || {
        let n = db.count("SELECT count(*) FROM outboxevent");
        (n == 0, format!("{n} rows"))
    })
    .await;

    // The aggregate id is the ordering key; the aggregate type a header.
    let id = rx.requests_at("/ledger")[0].event_id().unwrap().to_owned();
    let event = host.get_event(&id).await;
    assert!(event["headers"].to_string().contains("aggregate-type"), "{event:#}");
    host.stop().await;
}

/// A backlog larger than a batch, ids crossing 9→10 and 99→100 within batches, one ordering
/// key, the default `order_by` (the id): the events are relayed, and so delivered to an ordered
/// target, in id order. (The read query once sorted by the text of the id, 1, 10, 100, 11, …,
/// and the backlog is read batch after batch from a cursor.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backlog_is_relayed_in_id_order_batch_after_batch() {
    const ROWS: i64 = 150;
    let db = TempDb::postgres("outboxd_src_order");
    db.exec(
        "CREATE TABLE outbox (
            id         bigserial PRIMARY KEY,
            event_type text NOT NULL,
            payload    jsonb NOT NULL,
            agg        text NOT NULL,
            status     text NOT NULL DEFAULT 'pending'
        )",
    );
    db.exec(&format!(
        "INSERT INTO outbox (event_type, payload, agg)
         SELECT 'order.updated', jsonb_build_object('n', i), 'order-1' FROM generate_series(1, {ROWS}) AS i ORDER BY i"
    ));
    let rx = Receiver::builder().default_behavior(Behavior::ok()).start().await;
    let mut host = Host::new();
    host.add_target(
        "ledger",
        &Target::webhook(&rx.url("/ledger")).ordered(true).concurrency(4),
    );
    host.add_source(
        &Source::postgres("orders", &db.url())
            .set("table", "outbox")
            .set("batch_size", 40)
            .set("poll_interval_ms", 20)
            .column("ordering_key", "agg"),
    );
    host.start().await;
    rx.wait_until(default_timeout(), |reqs| reqs.len() >= ROWS as usize)
        .await
        .unwrap_or_else(|e| panic!("{e}\n{}", host.stderr_tail(40)));
    let ns: Vec<i64> = rx
        .requests_at("/ledger")
        .iter()
        .map(|r| r.json()["data"]["n"].as_i64().unwrap())
        .collect();
    assert_eq!(
        ns,
        (1..=ROWS).collect::<Vec<_>>(),
        "delivered out of the order of the ids"
    );
    let sources = host
        .wait_for_sources(default_timeout(), |s| {
            find_named(s, "orders").is_some_and(|s| s["rows_relayed"] == ROWS)
        })
        .await;
    let source = source_entry(&sources, "orders");
    assert_eq!(source["rows_failed"], 0, "{source:#}");
    eventually("every row is marked done", || {
        let n = db.count("SELECT count(*) FROM outbox WHERE status = 'done'");
        (n == ROWS, format!("{n} rows done"))
    })
    .await;
    host.stop().await;
}

/// A `deliver_at` column of type `timestamptz`: the row scheduled a few seconds ahead waits,
/// the other is delivered at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_row_with_a_future_deliver_at_waits_then_is_delivered() {
    let db = TempDb::postgres("outboxd_src_sched");
    db.exec(
        "CREATE TABLE outbox (id bigserial PRIMARY KEY, event_type text NOT NULL, payload jsonb NOT NULL,
                              status text NOT NULL DEFAULT 'pending', deliver_at timestamptz)",
    );
    let rx = Receiver::start().await;
    let mut host = Host::new();
    host.add_target("sink", &Target::webhook(&rx.url("/sink")));
    host.add_source(
        &Source::postgres("shop", &db.url())
            .set("poll_interval_ms", 20)
            .column("deliver_at", "deliver_at"),
    );
    host.start().await;
    db.exec(
        "BEGIN;
         INSERT INTO outbox (event_type, payload, deliver_at) VALUES ('cart.reminder', '{\"row\":1}', now() + interval '4 seconds');
         INSERT INTO outbox (event_type, payload) VALUES ('order.created', '{\"row\":2}');
         COMMIT;",
    );
    let due_ms =
        db.count("SELECT (extract(epoch from deliver_at) * 1000)::bigint FROM outbox WHERE deliver_at IS NOT NULL");
    expect_scheduled_row_waits(&rx, &host, "/sink", due_ms).await;
    db.expect_outbox_done(2).await;
    host.stop().await;
}
