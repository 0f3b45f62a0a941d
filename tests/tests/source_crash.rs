//! Exactly once into outboxd, whatever crashes: outboxd is killed with SIGKILL 10 times
//! while two producers write 5,000 rows into an SQLite source; afterwards every row is an
//! event exactly once (none missing, none duplicated) and every row is marked `done`.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use testkit::database::sqlite_rows;
use testkit::sources::Source;
use testkit::{Host, eventually};

const PRODUCERS: usize = 2;
const ROWS_EACH: usize = 2_500;
const KILLS: usize = 10;

/// Writes `ROWS_EACH` rows, one transaction each, spread over the kills: in phase `k` (after
/// `k` kills) rows up to `(k + 1) / (KILLS + 1)` of the total, so every kill lands while the
/// producers are still writing.
fn producer(path: std::path::PathBuf, which: usize, phase: Arc<AtomicUsize>) {
    let conn = rusqlite::Connection::open(&path).expect("open app db");
    conn.busy_timeout(Duration::from_secs(30)).unwrap();
    for i in 0..ROWS_EACH {
        while i >= (phase.load(Ordering::SeqCst) + 1) * ROWS_EACH / (KILLS + 1) {
            std::thread::sleep(Duration::from_millis(5));
        }
        let payload = format!(r#"{{"producer":{which},"i":{i}}}"#);
        conn.execute(
            "INSERT INTO outbox (event_type, payload) VALUES ('order.created', ?1)",
            [&payload],
        )
        .expect("insert outbox row");
        if i % 20 == 0 {
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_sigkills_while_producers_write_relay_every_row_exactly_once() {
    let mut host = Host::new();
    let app_db = host.dir().join("app.db");
    {
        let conn = rusqlite::Connection::open(&app_db).unwrap();
        conn.execute_batch(
            "PRAGMA journal_mode = WAL;
             CREATE TABLE outbox (id INTEGER PRIMARY KEY AUTOINCREMENT, event_type TEXT NOT NULL,
                 payload TEXT NOT NULL, status TEXT NOT NULL DEFAULT 'pending');",
        )
        .unwrap();
    }
    // Small batches: more relay transactions, so kills land between ingest and marking.
    host.add_source(
        &Source::sqlite("crash", &app_db)
            .set("batch_size", 50)
            .set("poll_interval_ms", 5),
    );
    host.start().await;

    let phase = Arc::new(AtomicUsize::new(0));
    let threads: Vec<_> = (0..PRODUCERS)
        .map(|n| {
            let (p, phase) = (app_db.clone(), Arc::clone(&phase));
            std::thread::spawn(move || producer(p, n, phase))
        })
        .collect();

    for k in 0..KILLS {
        tokio::time::sleep(Duration::from_millis(150 + 97 * (k as u64 % 5))).await;
        host.kill_9().await;
        host.start().await;
        phase.fetch_add(1, Ordering::SeqCst);
    }
    for t in threads {
        t.join().expect("producer thread");
    }

    let total = (PRODUCERS * ROWS_EACH) as i64;
    eventually("every row marked done", || {
        let pending = sqlite_rows(&app_db, "SELECT count(*) FROM outbox WHERE status <> 'done'");
        (pending == [["0"]], format!("{pending:?} rows not done"))
    })
    .await;
    let rows = sqlite_rows(&app_db, "SELECT count(*) FROM outbox");
    assert_eq!(rows, [[total.to_string()]]);

    // The store, whichever it is.
    let events = host.count_rows("events");
    assert_eq!(events, total, "one event per row: none missing, none duplicated");
    let payloads: BTreeSet<String> = host
        .sql("SELECT payload FROM events")
        .into_iter()
        .map(|row| row[0].clone())
        .collect();
    assert_eq!(payloads.len() as i64, total, "every event a different row");
    let keys = host.sql_i64("SELECT count(*) FROM idempotency_keys WHERE key LIKE 'source:crash:%'");
    assert_eq!(keys, total);
    host.stop().await;
}
