//! relay-bench: how fast outboxd relays an application's outbox table into its store, and
//! how much the relay slows the application's own inserts.
//!
//! For each source kind (SQLite, PostgreSQL): the PHP example producer first places
//! `--app-rows` orders with outboxd stopped (the application's insert rate alone); then
//! `--rows` outbox rows are bulk-written as a backlog, outboxd starts with its only target
//! paused (deliveries are created but never attempted), and while it drains the backlog the
//! producer places `--app-rows` orders again (the insert rate beside a busy relay). Relay
//! rate = rows relayed / time from start to the last row marked done.
//!
//! usage: relay-bench [--rows N] [--app-rows M] [--batch B] [--kinds sqlite,postgres]
//! Needs `php` (php-cli, php-sqlite3, php-pgsql) and, for postgres, the server of
//! `OUTBOXD_TEST_PG` (default 127.0.0.1:5432). Prints a table, then one JSON line.

use std::time::{Duration, Instant};

use serde_json::{Value, json};
use testkit::sources::{TempDb, php_example_dir};
use testkit::{Host, Target};

struct Args {
    rows: usize,
    app_rows: usize,
    batch: u32,
    kinds: Vec<String>,
}

fn parse_args() -> Result<Args, String> {
    let mut a = Args {
        rows: 50_000,
        app_rows: 1_000,
        batch: 500,
        kinds: vec!["sqlite".into(), "postgres".into()],
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || it.next().ok_or(format!("{flag} needs a value"));
        match flag.as_str() {
            "--rows" => a.rows = value()?.parse().map_err(|e| format!("--rows: {e}"))?,
            "--app-rows" => a.app_rows = value()?.parse().map_err(|e| format!("--app-rows: {e}"))?,
            "--batch" => a.batch = value()?.parse().map_err(|e| format!("--batch: {e}"))?,
            "--kinds" => a.kinds = value()?.split(',').map(str::to_owned).collect(),
            "-h" | "--help" => {
                return Err(
                    "usage: relay-bench [--rows N] [--app-rows M] [--batch B] [--kinds sqlite,postgres]".into(),
                );
            }
            other => return Err(format!("unknown argument {other}")),
        }
    }
    if a.rows == 0 || a.app_rows == 0 || a.batch == 0 {
        return Err("--rows, --app-rows and --batch must be at least 1".into());
    }
    Ok(a)
}

/// Runs the PHP producer for `count` orders; returns how long it took.
fn php(count: usize, dsn: &str, user: Option<&str>) -> Duration {
    let mut cmd = std::process::Command::new("php");
    cmd.arg(php_example_dir().join("producer.php"))
        .arg(count.to_string())
        .arg(dsn);
    if let Some(u) = user {
        cmd.arg(u);
    }
    let t = Instant::now();
    let out = cmd.output().expect("run php");
    assert!(out.status.success(), "php: {}", String::from_utf8_lossy(&out.stderr));
    t.elapsed()
}

fn payload(i: usize) -> String {
    format!(
        r#"{{"order_id":{i},"customer":"customer-{}","total":"{}.99","currency":"EUR"}}"#,
        i % 50,
        i % 1000
    )
}

async fn run_kind(kind: &str, args: &Args) -> Value {
    let mut host = Host::new();
    let pg = (kind == "postgres").then(|| TempDb::postgres("outboxd_relay_bench"));
    let (dsn, user, source) = match &pg {
        None => {
            let path = host.dir().join("app.db");
            (
                format!("sqlite:{}", path.display()),
                None,
                format!("kind = \"sqlite\"\npath = {:?}", path.display().to_string()),
            )
        }
        Some(db) => {
            let (dsn, user) = db.pdo();
            (dsn, Some(user), format!("kind = \"postgres\"\nurl = \"{}\"", db.url()))
        }
    };
    // Schema, then the application's insert rate alone.
    php(0, &dsn, user);
    let alone = php(args.app_rows, &dsn, user);

    // The backlog.
    match &pg {
        None => {
            let conn = rusqlite::Connection::open(host.dir().join("app.db")).unwrap();
            conn.busy_timeout(Duration::from_secs(30)).unwrap();
            conn.execute_batch("BEGIN").unwrap();
            {
                let mut st = conn
                    .prepare("INSERT INTO outbox (event_type, payload) VALUES ('order.created', ?1)")
                    .unwrap();
                for i in 0..args.rows {
                    st.execute([payload(i)]).unwrap();
                }
            }
            conn.execute_batch("COMMIT").unwrap();
        }
        Some(db) => db.exec(&format!(
            "INSERT INTO outbox (event_type, payload) SELECT 'order.created', \
             jsonb_build_object('order_id', i, 'customer', 'customer-' || (i % 50), 'total', (i % 1000) || '.99', 'currency', 'EUR') \
             FROM generate_series(1, {}) AS i",
            args.rows
        )),
    }

    host.add_target("sink", &Target::webhook("http://127.0.0.1:9/sink"));
    host.append_config_raw(&format!(
        "[[sources]]\nname = \"bench\"\n{source}\nbatch_size = {}\n",
        args.batch
    ));
    let paused = host.run_cli(&["target", "pause", "sink"]).await;
    assert!(paused.status.success(), "{paused}");
    let expected = (args.rows + 2 * args.app_rows) as u64;

    host.start().await;
    let started = Instant::now();
    let (dsn2, user2) = (dsn.clone(), user.map(str::to_owned));
    let n = args.app_rows;
    let app = tokio::task::spawn_blocking(move || php(n, &dsn2, user2.as_deref()));
    let relayed_at = loop {
        let (_, s) = host.get_json("/v1/sources").await;
        let relayed = s[0]["rows_relayed"].as_u64().unwrap_or(0);
        if relayed >= expected {
            break started.elapsed();
        }
        if !s[0]["last_error"].is_null() && started.elapsed() > Duration::from_secs(600) {
            panic!("relay failing: {s:#}");
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    let beside = app.await.expect("php task");
    let events = host.count_rows("events");
    host.stop().await;

    let rate = |n: usize, d: Duration| n as f64 / d.as_secs_f64();
    json!({
        "kind": kind,
        "rows": expected,
        "batch_size": args.batch,
        "relay_seconds": relayed_at.as_secs_f64(),
        "relay_rows_per_sec": rate(expected as usize, relayed_at),
        "events_in_store": events,
        "app_orders": args.app_rows,
        "app_orders_per_sec_alone": rate(args.app_rows, alone),
        "app_orders_per_sec_beside_relay": rate(args.app_rows, beside),
        "app_slowdown_percent": 100.0 * (beside.as_secs_f64() / alone.as_secs_f64() - 1.0),
    })
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let args = match parse_args() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("{e}");
            return std::process::ExitCode::from(2);
        }
    };
    let mut results = Vec::new();
    for kind in &args.kinds {
        if kind != "sqlite" && kind != "postgres" {
            eprintln!("unknown kind {kind}: use sqlite, postgres");
            return std::process::ExitCode::from(2);
        }
        eprintln!(
            "relay-bench: {kind}, {} backlog rows, {} app orders…",
            args.rows, args.app_rows
        );
        results.push(run_kind(kind, &args).await);
    }
    println!(
        "{:<9} {:>8} {:>6} {:>10} {:>12} {:>14} {:>16} {:>9}",
        "source", "rows", "batch", "seconds", "rows/s", "app orders/s", "app beside relay", "slowdown"
    );
    for r in &results {
        println!(
            "{:<9} {:>8} {:>6} {:>10.2} {:>12.0} {:>14.0} {:>16.0} {:>8.1}%",
            r["kind"].as_str().unwrap_or(""),
            r["rows"],
            r["batch_size"],
            r["relay_seconds"].as_f64().unwrap_or(0.0),
            r["relay_rows_per_sec"].as_f64().unwrap_or(0.0),
            r["app_orders_per_sec_alone"].as_f64().unwrap_or(0.0),
            r["app_orders_per_sec_beside_relay"].as_f64().unwrap_or(0.0),
            r["app_slowdown_percent"].as_f64().unwrap_or(0.0),
        );
    }
    println!("{}", json!({ "relay_bench": results }));
    std::process::ExitCode::SUCCESS
}
