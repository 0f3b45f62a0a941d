//! A source's failures stay that source's: a missing table, a missing column and an
//! unreachable server are clear errors in `GET /v1/sources` (retried with backoff), a row
//! with invalid JSON or an invalid type is marked `failed` (or, in delete mode, left in
//! place) with its reason, and meanwhile the healthy sources keep relaying.

use testkit::database::sqlite_rows;
use testkit::sources::Source;
use testkit::{Host, Receiver, Target, default_timeout, source_entry};

fn app_db(path: &std::path::Path, with_status: bool) -> rusqlite::Connection {
    let conn = rusqlite::Connection::open(path).expect("open app db");
    let status = if with_status {
        ", status TEXT NOT NULL DEFAULT 'pending'"
    } else {
        ""
    };
    conn.execute_batch(&format!(
        "CREATE TABLE outbox (id INTEGER PRIMARY KEY AUTOINCREMENT, event_type TEXT NOT NULL, payload TEXT{status});"
    ))
    .expect("create outbox");
    conn
}

fn insert(conn: &rusqlite::Connection, event_type: &str, payload: &str) {
    conn.execute(
        "INSERT INTO outbox (event_type, payload) VALUES (?1, ?2)",
        [event_type, payload],
    )
    .expect("insert");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broken_sources_and_bad_rows_are_reported_while_the_others_relay() {
    let rx = Receiver::start().await;
    let mut host = Host::new();
    host.add_target("sink", &Target::webhook(&rx.url("/sink")));
    let dir = host.dir().to_path_buf();
    let good = app_db(&dir.join("good.db"), true);
    let deleting = app_db(&dir.join("deleting.db"), false);
    let _other = app_db(&dir.join("other.db"), true);
    // Rows written before the start: good, bad JSON, bad type, good.
    insert(&good, "order.created", r#"{"n":1}"#);
    insert(&good, "order.created", "{not json");
    insert(&good, "order created", r#"{"n":3}"#);
    insert(&good, "order.created", r#"{"n":4}"#);
    insert(&deleting, "order.created", "[1, 2");
    insert(&deleting, "order.created", r#"{"n":6}"#);

    // Every source polls every 20 ms.
    let quick = |source: Source| source.set("poll_interval_ms", 20);
    let sqlite = |name: &str, file: &str| quick(Source::sqlite(name, &dir.join(file)));
    host.add_source(&sqlite("good", "good.db"))
        .add_source(
            &sqlite("deleting", "deleting.db")
                .set("on_relayed", "delete")
                .column("status", ""),
        )
        .add_source(&sqlite("missing-table", "other.db").set("table", "no_such_table"))
        .add_source(&sqlite("missing-column", "other.db").column("headers", "hdrs"))
        .add_source(&quick(Source::postgres(
            "pg-down",
            "postgres://postgres@127.0.0.1:1/app",
        )))
        .add_source(&quick(Source::mysql("mysql-down", "mysql://root@127.0.0.1:1/app")));
    host.start().await;

    let sources = host
        .wait_for_sources(default_timeout(), |s| {
            source_entry(s, "good")["rows_relayed"] == 2
                && source_entry(s, "deleting")["rows_relayed"] == 1
                && ["missing-table", "missing-column", "pg-down", "mysql-down"]
                    .iter()
                    .all(|n| source_entry(s, n)["last_error"].is_object())
        })
        .await;

    let good_s = source_entry(&sources, "good");
    assert_eq!(good_s["rows_failed"], 2, "{good_s:#}");
    assert_eq!(good_s["state"], "relaying", "{good_s:#}");
    assert!(good_s["last_error"].is_null(), "{good_s:#}");
    let bad = good_s["last_bad_row"]["message"].as_str().unwrap_or_default();
    assert!(bad.starts_with("3: ") && bad.contains("`type`"), "{good_s:#}");
    let statuses = sqlite_rows(&dir.join("good.db"), "SELECT id, status FROM outbox ORDER BY id");
    assert_eq!(
        statuses,
        [["1", "done"], ["2", "failed"], ["3", "failed"], ["4", "done"]]
    );
    assert!(
        host.stderr().contains("the payload is not JSON"),
        "the reason is logged:\n{}",
        host.stderr_tail(40)
    );

    // Delete mode: the good row is gone, the bad one stays where it was.
    let d = source_entry(&sources, "deleting");
    assert_eq!(d["rows_failed"], 1, "{d:#}");
    assert!(
        d["last_bad_row"]["message"]
            .as_str()
            .unwrap_or_default()
            .contains("not JSON"),
        "{d:#}"
    );
    let left = sqlite_rows(&dir.join("deleting.db"), "SELECT payload FROM outbox");
    assert_eq!(left, [["[1, 2"]]);

    let err = |name: &str| {
        let e = source_entry(&sources, name);
        assert_eq!(e["state"], "failing", "{e:#}");
        e["last_error"]["message"].as_str().unwrap_or_default().to_owned()
    };
    assert_eq!(err("missing-table"), "table `no_such_table` does not exist");
    assert_eq!(err("missing-column"), "table `outbox` has no column `hdrs`");
    assert!(err("pg-down").starts_with("cannot connect: "), "{sources:#}");
    assert!(err("mysql-down").starts_with("cannot connect: "), "{sources:#}");

    // The healthy sources keep relaying what is written now.
    insert(&good, "order.created", r#"{"n":5}"#);
    insert(&deleting, "order.created", r#"{"n":7}"#);
    let reqs = rx
        .wait_for("/sink", 5, default_timeout())
        .await
        .unwrap_or_else(|e| panic!("{e}\n{}", host.stderr_tail(40)));
    let mut ns: Vec<i64> = reqs.iter().map(|r| r.json()["data"]["n"].as_i64().unwrap()).collect();
    ns.sort();
    assert_eq!(ns, vec![1, 4, 5, 6, 7]);
    host.stop().await;
}
