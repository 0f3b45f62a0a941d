//! relay-bench: how fast outboxd relays an application's outbox table into its store, and
//! how much the relay slows the application's own inserts.
//!
//! For each source kind (SQLite, PostgreSQL, MySQL/MariaDB), `--rounds` times, back to back,
//! the PHP example producer places `--app-rows` orders three times:
//! 1. alone, with outboxd stopped (the application's insert rate on its own);
//! 2. steady, with outboxd running and relaying the rows as they are written;
//! 3. catching up: `--rows` outbox rows are bulk-written as a backlog, outboxd starts, and the
//!    producer writes while the relay drains the backlog as fast as it can.
//!
//! The only target is paused (deliveries are created but never attempted). Relay rate = rows
//! relayed in run 3 / time from start to the last row marked done. The figures are medians
//! over the rounds; each slowdown is the median of each round's own comparison with run 1, so
//! a machine whose speed drifts between rounds (a shared VM) does not decide it.
//!
//! usage: relay-bench [--rows N] [--app-rows M] [--batch B] [--rounds R]
//!                    [--kinds sqlite,postgres,mysql] [--outboxd BIN] [--plugins DIR] [--quick]
//! Needs `php` (php-cli, php-sqlite3, php-pgsql, php-mysql) and, for postgres and mysql, the
//! servers of `OUTBOXD_TEST_PG` (default 127.0.0.1:5432) and `OUTBOXD_TEST_MYSQL` (default
//! 127.0.0.1:3306); a server kind whose server does not answer is skipped, with a line saying
//! so. `--outboxd` and `--plugins` stand for `OUTBOXD_BIN` and `OUTBOXD_PLUGINS_DIR`;
//! `--quick` (tiny sizes, one round) only proves that it works. Prints a table on stderr and
//! one JSON object on stdout, so that `outboxd-bench --extra relay=relay-bench` includes it
//! (`cargo xtask bench` does when `php` is installed).

use std::time::{Duration, Instant};

use serde_json::{Value, json};
use testkit::sources::{Server, TempDb, php_example_dir};
use testkit::{Host, Target};

struct Args {
    rows: usize,
    app_rows: usize,
    batch: u32,
    rounds: usize,
    kinds: Vec<String>,
    outboxd: Option<String>,
    plugins: Option<String>,
}

fn absolute(path: &str) -> Result<String, String> {
    std::fs::canonicalize(path)
        .map(|p| p.display().to_string())
        .map_err(|e| format!("{path}: {e}"))
}

fn parse_args() -> Result<Args, String> {
    let mut a = Args {
        rows: 50_000,
        app_rows: 1_000,
        batch: 500,
        rounds: 5,
        kinds: vec!["sqlite".into(), "postgres".into(), "mysql".into()],
        outboxd: None,
        plugins: None,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || it.next().ok_or(format!("{flag} needs a value"));
        match flag.as_str() {
            "--rows" => a.rows = value()?.parse().map_err(|e| format!("--rows: {e}"))?,
            "--app-rows" => a.app_rows = value()?.parse().map_err(|e| format!("--app-rows: {e}"))?,
            "--batch" => a.batch = value()?.parse().map_err(|e| format!("--batch: {e}"))?,
            "--rounds" => a.rounds = value()?.parse().map_err(|e| format!("--rounds: {e}"))?,
            "--kinds" => a.kinds = value()?.split(',').map(str::to_owned).collect(),
            // Absolute, since the hosts run in directories of their own.
            "--outboxd" => a.outboxd = Some(absolute(&value()?)?),
            "--plugins" => a.plugins = Some(absolute(&value()?)?),
            "--quick" => {
                (a.rows, a.app_rows, a.rounds) = (2_000, 50, 1);
            }
            "-h" | "--help" => {
                return Err("usage: relay-bench [--rows N] [--app-rows M] [--batch B] [--rounds R] \
                     [--kinds sqlite,postgres,mysql] [--outboxd BIN] [--plugins DIR] [--quick]"
                    .into());
            }
            other => return Err(format!("unknown argument {other}")),
        }
    }
    if let Some(k) = a
        .kinds
        .iter()
        .find(|k| !["sqlite", "postgres", "mysql"].contains(&k.as_str()))
    {
        return Err(format!("unknown kind {k}: use sqlite, postgres, mysql"));
    }
    if a.rows == 0 || a.app_rows == 0 || a.batch == 0 || a.rounds == 0 {
        return Err("--rows, --app-rows, --batch and --rounds must be at least 1".into());
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

/// The application's insert time for `count` orders: the producer's run minus its start-up
/// (PHP, connect, schema), which `php(0)` measures just before; and when it finished. Runs
/// on a blocking thread.
async fn app_time(count: usize, dsn: &str, user: Option<&str>) -> (Duration, Instant) {
    let (dsn, user) = (dsn.to_owned(), user.map(str::to_owned));
    tokio::task::spawn_blocking(move || {
        let startup = php(0, &dsn, user.as_deref());
        let took = php(count, &dsn, user.as_deref()).saturating_sub(startup);
        (took, Instant::now())
    })
    .await
    .expect("php task")
}

/// Writes `rows` outbox rows in one transaction: the backlog a round's relay drains.
fn write_backlog(kind: &str, host: &Host, db: Option<&TempDb>, rows: usize, first: usize) {
    match (kind, db) {
        ("sqlite", _) => {
            let conn = rusqlite::Connection::open(host.dir().join("app.db")).unwrap();
            conn.busy_timeout(Duration::from_secs(30)).unwrap();
            conn.execute_batch("BEGIN").unwrap();
            {
                let mut st = conn
                    .prepare("INSERT INTO outbox (event_type, payload) VALUES ('order.created', ?1)")
                    .unwrap();
                for i in first..first + rows {
                    st.execute([payload(i)]).unwrap();
                }
            }
            conn.execute_batch("COMMIT").unwrap();
        }
        ("postgres", Some(db)) => db.exec(&format!(
            "INSERT INTO outbox (event_type, payload) SELECT 'order.created', \
             jsonb_build_object('order_id', i, 'customer', 'customer-' || (i % 50), 'total', (i % 1000) || '.99', 'currency', 'EUR') \
             FROM generate_series({}, {}) AS i",
            first,
            first + rows - 1
        )),
        (_, Some(db)) => db.exec(&format!(
            // MariaDB's recursion limit (MySQL 8 calls it `cte_max_recursion_depth`).
            "SET SESSION max_recursive_iterations = 100000000; INSERT INTO outbox (event_type, payload) \
             WITH RECURSIVE s(i) AS (SELECT {} UNION ALL SELECT i + 1 FROM s WHERE i < {}) \
             SELECT 'order.created', JSON_OBJECT('order_id', i, 'customer', CONCAT('customer-', i % 50), \
             'total', CONCAT(i % 1000, '.99'), 'currency', 'EUR') FROM s",
            first,
            first + rows - 1
        )),
        _ => unreachable!("a server kind has a database"),
    }
}

/// Waits until the running host's source has relayed `rows` rows since it started; returns
/// when it saw that.
async fn wait_relayed(host: &Host, rows: u64) -> Instant {
    let started = Instant::now();
    loop {
        let (_, s) = host.get_json("/v1/sources").await;
        // rows_relayed counts from this start.
        if s[0]["rows_relayed"].as_u64().unwrap_or(0) >= rows {
            return Instant::now();
        }
        if !s[0]["last_error"].is_null() && started.elapsed() > Duration::from_secs(600) {
            panic!("relay failing: {s:#}");
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

async fn run_kind(kind: &str, args: &Args) -> Value {
    let mut host = Host::new();
    let db = match kind {
        "postgres" => Some(TempDb::postgres("outboxd_relay_bench")),
        "mysql" => Some(TempDb::mariadb("outboxd_relay_bench")),
        _ => None,
    };
    let (dsn, user, source) = match &db {
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
            (dsn, Some(user), format!("kind = \"{kind}\"\nurl = \"{}\"", db.url()))
        }
    };
    php(0, &dsn, user); // the application's schema

    host.add_target("sink", &Target::webhook("http://127.0.0.1:9/sink"));
    host.append_config_raw(&format!(
        "[[sources]]\nname = \"bench\"\n{source}\nbatch_size = {}\n",
        args.batch
    ));
    let paused = host.run_cli(&["target", "pause", "sink"]).await;
    assert!(paused.status.success(), "{paused}");

    let rate = |n: usize, d: Duration| n as f64 / d.as_secs_f64();
    let mut rounds = Vec::new();
    let mut written = 0;
    for round in 0..args.rounds {
        // The application alone: outboxd is not running.
        let (alone, _) = app_time(args.app_rows, &dsn, user).await;

        // Steady state: outboxd relays the application's rows as they are written.
        host.start().await;
        wait_relayed(&host, args.app_rows as u64).await;
        let (steady, _) = app_time(args.app_rows, &dsn, user).await;
        wait_relayed(&host, 2 * args.app_rows as u64).await;
        host.stop().await;

        // Catching up: a backlog, then outboxd starts and the application writes again while
        // the relay drains it as fast as it can.
        write_backlog(kind, &host, db.as_ref(), args.rows, written);
        written += args.rows;
        let this_run = (args.rows + args.app_rows) as u64;
        host.start().await;
        let started = Instant::now();
        let ((beside, app_done), relayed_at) =
            tokio::join!(app_time(args.app_rows, &dsn, user), wait_relayed(&host, this_run));
        host.stop().await;
        let relay_seconds = (relayed_at - started).as_secs_f64();
        let slowdown = |t: Duration| 100.0 * (t.as_secs_f64() / alone.as_secs_f64() - 1.0);
        let r = json!({
            "round": round + 1,
            "relay_rows": this_run,
            "relay_seconds": relay_seconds,
            "relay_rows_per_sec": this_run as f64 / relay_seconds,
            "app_orders_per_sec_alone": rate(args.app_rows, alone),
            "app_orders_per_sec_steady": rate(args.app_rows, steady),
            "app_orders_per_sec_catching_up": rate(args.app_rows, beside),
            "app_slowdown_percent_steady": slowdown(steady),
            "app_slowdown_percent_catching_up": slowdown(beside),
            // The application finished while the relay still had a backlog: the whole
            // catching-up window was measured against a busy relay.
            "app_done_while_relaying": app_done < relayed_at,
        });
        eprintln!("round {}: {r}", round + 1);
        rounds.push(r);
    }
    let events = host.count_rows("events");
    let col = |k: &str| rounds.iter().map(|r| r[k].as_f64().unwrap_or(0.0)).collect::<Vec<_>>();
    json!({
        "kind": kind,
        "rows": written + 3 * args.app_rows * args.rounds,
        "batch_size": args.batch,
        "rounds": rounds.len(),
        "events_in_store": events,
        "relay_rows_per_sec": median(col("relay_rows_per_sec")),
        "app_orders": args.app_rows,
        "app_orders_per_sec_alone": median(col("app_orders_per_sec_alone")),
        "app_orders_per_sec_steady": median(col("app_orders_per_sec_steady")),
        "app_orders_per_sec_catching_up": median(col("app_orders_per_sec_catching_up")),
        // The median of each round's own comparisons: the three runs of a round are back to
        // back, so the machine's drift between rounds cancels out of each ratio.
        "app_slowdown_percent_steady": median(col("app_slowdown_percent_steady")),
        "app_slowdown_percent_catching_up": median(col("app_slowdown_percent_catching_up")),
        "per_round": rounds,
    })
}

fn main() -> std::process::ExitCode {
    let args = match parse_args() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("{e}");
            return std::process::ExitCode::from(2);
        }
    };
    // SAFETY: no other thread exists yet (the runtime is built below).
    unsafe {
        if let Some(bin) = &args.outboxd {
            std::env::set_var("OUTBOXD_BIN", bin);
        }
        if let Some(dir) = &args.plugins {
            std::env::set_var("OUTBOXD_PLUGINS_DIR", dir);
        }
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    runtime.block_on(run(args))
}

async fn run(args: Args) -> std::process::ExitCode {
    let mut results = Vec::new();
    let mut skipped = Vec::new();
    for kind in &args.kinds {
        let server = match kind.as_str() {
            "postgres" => Some(Server::Postgres),
            "mysql" => Some(Server::Mariadb),
            _ => None,
        };
        if let Some(Err(e)) = server.map(Server::answers) {
            eprintln!("relay-bench: {kind} skipped, its server does not answer: {e}");
            skipped.push(json!({ "kind": kind, "reason": e }));
            continue;
        }
        eprintln!(
            "relay-bench: {kind}, {} rounds of {} backlog rows and {} app orders…",
            args.rounds, args.rows, args.app_rows
        );
        results.push(run_kind(kind, &args).await);
    }
    eprintln!(
        "{:<9} {:>8} {:>6} {:>7} {:>9} {:>13} {:>14} {:>16}",
        "source", "rows", "batch", "rounds", "rows/s", "app orders/s", "slowdown steady", "slowdown catch-up"
    );
    let mut rows = Vec::new();
    for r in &results {
        let kind = r["kind"].as_str().unwrap_or("");
        let rate = r["relay_rows_per_sec"].as_f64().unwrap_or(0.0);
        let steady = r["app_slowdown_percent_steady"].as_f64().unwrap_or(0.0);
        let catching_up = r["app_slowdown_percent_catching_up"].as_f64().unwrap_or(0.0);
        eprintln!(
            "{:<9} {:>8} {:>6} {:>7} {:>9.0} {:>13.0} {:>14.1}% {:>16.1}%",
            kind,
            r["rows"],
            r["batch_size"],
            r["rounds"],
            rate,
            r["app_orders_per_sec_alone"].as_f64().unwrap_or(0.0),
            steady,
            catching_up,
        );
        // The rows `outboxd-bench --extra` adds to its table.
        let figure = |f: &str, v: f64, unit: &str| json!({ "figure": format!("{kind} {f}"), "value": (v * 10.0).round() / 10.0, "unit": unit });
        rows.push(figure("source relayed", rate.round(), "rows/s"));
        rows.push(figure("app slowdown, steady", steady, "%"));
        rows.push(figure("app slowdown, catching up", catching_up, "%"));
    }
    println!(
        "{}",
        json!({ "relay_bench": results, "skipped": skipped, "rows": rows })
    );
    std::process::ExitCode::SUCCESS
}
