//! Helpers for the source (application outbox table) tests: throwaway PostgreSQL and
//! MariaDB databases, created and dropped through the `psql` and `mariadb` command-line
//! clients so that every test owns its database, and the PHP example producer.
//!
//! Servers: PostgreSQL at `OUTBOXD_TEST_PG` (default `127.0.0.1:5432`, user `postgres`,
//! trust auth) and MariaDB/MySQL at `OUTBOXD_TEST_MYSQL` (default `127.0.0.1:3306`, user
//! `root` without a password).

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::atomic::{AtomicU32, Ordering};

use crate::artifacts::workspace_root;
use crate::{Host, Receiver, default_timeout, eventually};

/// The shop's targets in the PostgreSQL and MariaDB source tests: `(name, event globs)`, each a
/// webhook to the receiver's `/<name>` (see [`Host::add_webhooks`]).
pub const SHOP_TARGETS: &[(&str, &[&str])] = &[
    ("crm", &["order.*"]),
    ("analytics", &["*"]),
    ("billing", &["order.created"]),
];

/// A `[[sources]]` entry of `outboxd.toml`, for [`Host::add_source`].
#[derive(Clone, Debug)]
pub struct Source {
    table: toml::Table,
}

impl Source {
    /// A source called `name` of `kind` (`sqlite`, `postgres`, `mysql`).
    pub fn new(name: &str, kind: &str) -> Self {
        let mut table = toml::Table::new();
        table.insert("name".into(), name.into());
        table.insert("kind".into(), kind.into());
        Self { table }
    }

    /// An SQLite source reading the database file at `path`.
    pub fn sqlite(name: &str, path: &Path) -> Self {
        Self::new(name, "sqlite").set("path", path.display().to_string())
    }

    /// A PostgreSQL source at `url`.
    pub fn postgres(name: &str, url: &str) -> Self {
        Self::new(name, "postgres").set("url", url)
    }

    /// A MariaDB/MySQL source at `url`.
    pub fn mysql(name: &str, url: &str) -> Self {
        Self::new(name, "mysql").set("url", url)
    }

    /// Set a key of the entry (`table`, `schema`, `poll_interval_ms`, `batch_size`, …).
    pub fn set(mut self, key: &str, value: impl Into<toml::Value>) -> Self {
        self.table.insert(key.to_owned(), value.into());
        self
    }

    /// Map `role` to a column of the table (`[sources.columns]`; `""` for none).
    pub fn column(mut self, role: &str, column: &str) -> Self {
        self.table
            .entry("columns")
            .or_insert_with(|| toml::Value::Table(toml::Table::new()))
            .as_table_mut()
            .expect("columns is a table")
            .insert(role.to_owned(), column.into());
        self
    }

    /// The entry as a TOML table.
    pub fn to_table(&self) -> toml::Table {
        self.table.clone()
    }
}

/// Which server a [`TempDb`] lives on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Server {
    Postgres,
    Mariadb,
}

/// A database made for one test and dropped when this value is dropped.
pub struct TempDb {
    server: Server,
    name: String,
    host: String,
    port: String,
}

impl Server {
    /// The server's `host:port`: its environment variable, or the default.
    fn address(self) -> String {
        let (var, default) = match self {
            Server::Postgres => ("OUTBOXD_TEST_PG", "127.0.0.1:5432"),
            Server::Mariadb => ("OUTBOXD_TEST_MYSQL", "127.0.0.1:3306"),
        };
        std::env::var(var).unwrap_or_else(|_| default.to_owned())
    }

    /// Whether the server accepts a TCP connection within 2 s; the error says where it tried.
    pub fn answers(self) -> Result<(), String> {
        let addr = self.address();
        let sock = std::net::ToSocketAddrs::to_socket_addrs(&addr)
            .map_err(|e| format!("{addr}: {e}"))?
            .next()
            .ok_or_else(|| format!("{addr}: no address"))?;
        std::net::TcpStream::connect_timeout(&sock, std::time::Duration::from_secs(2))
            .map(drop)
            .map_err(|e| format!("{addr}: {e}"))
    }

    fn host_port(self) -> (String, String) {
        let v = self.address();
        let (h, p) = v.rsplit_once(':').unwrap_or((v.as_str(), ""));
        (h.to_owned(), p.to_owned())
    }
}

fn check(out: std::io::Result<Output>, what: &str) -> String {
    let out = out.unwrap_or_else(|e| panic!("{what}: cannot run the client: {e}"));
    assert!(
        out.status.success(),
        "{what} failed ({}):\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

impl TempDb {
    /// A fresh PostgreSQL database named `<prefix>_<pid>_<n>`.
    pub fn postgres(prefix: &str) -> Self {
        let (host, port) = Server::Postgres.host_port();
        Self::create(Server::Postgres, prefix, host, port)
    }

    /// A fresh MariaDB/MySQL database named `<prefix>_<pid>_<n>`.
    pub fn mariadb(prefix: &str) -> Self {
        let (host, port) = Server::Mariadb.host_port();
        Self::create(Server::Mariadb, prefix, host, port)
    }

    fn create(server: Server, prefix: &str, host: String, port: String) -> Self {
        static N: AtomicU32 = AtomicU32::new(0);
        let name = format!(
            "{prefix}_{}_{}_{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed),
            rand::random::<u32>() % 100_000
        );
        let db = Self {
            server,
            name,
            host,
            port,
        };
        db.admin(&format!("CREATE DATABASE {}", db.name));
        db
    }

    /// The database's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The URL outboxd's `[[sources]] url` takes.
    pub fn url(&self) -> String {
        match self.server {
            Server::Postgres => format!("postgres://postgres@{}:{}/{}", self.host, self.port, self.name),
            Server::Mariadb => format!("mysql://root@{}:{}/{}", self.host, self.port, self.name),
        }
    }

    /// The PDO DSN and user the PHP producer takes.
    pub fn pdo(&self) -> (String, &'static str) {
        match self.server {
            Server::Postgres => (
                format!("pgsql:host={};port={};dbname={}", self.host, self.port, self.name),
                "postgres",
            ),
            Server::Mariadb => (
                format!("mysql:host={};port={};dbname={}", self.host, self.port, self.name),
                "root",
            ),
        }
    }

    fn client(&self, database: Option<&str>) -> Command {
        match self.server {
            Server::Postgres => {
                let mut c = Command::new("psql");
                c.args(["-X", "-q", "-At", "-F", "\t", "-v", "ON_ERROR_STOP=1"])
                    .args(["-h", &self.host, "-p", &self.port, "-U", "postgres"])
                    .args(["-d", database.unwrap_or("postgres")]);
                c
            }
            Server::Mariadb => {
                let mut c = Command::new("mariadb");
                c.args(["-N", "-B", "-h", &self.host, "-P", &self.port, "-u", "root"]);
                if let Some(d) = database {
                    c.arg(d);
                }
                c
            }
        }
    }

    fn flag(&self) -> &'static str {
        match self.server {
            Server::Postgres => "-c",
            Server::Mariadb => "-e",
        }
    }

    fn admin(&self, sql: &str) {
        check(self.client(None).args([self.flag(), sql]).output(), sql);
    }

    /// Runs SQL (several statements allowed) in the database; panics on failure.
    pub fn exec(&self, sql: &str) {
        check(self.client(Some(&self.name)).args([self.flag(), sql]).output(), sql);
    }

    /// Runs a query; one `Vec` of column texts per row (NULL as `NULL` for MariaDB, empty
    /// for PostgreSQL).
    pub fn query(&self, sql: &str) -> Vec<Vec<String>> {
        check(self.client(Some(&self.name)).args([self.flag(), sql]).output(), sql)
            .lines()
            .filter(|l| !l.is_empty())
            .map(|l| l.split('\t').map(str::to_owned).collect())
            .collect()
    }

    /// `SELECT count(*) …` as a number.
    pub fn count(&self, sql: &str) -> i64 {
        let rows = self.query(sql);
        rows.first()
            .and_then(|r| r.first())
            .and_then(|c| c.trim().parse().ok())
            .unwrap_or_else(|| panic!("{sql} gave {rows:?}"))
    }
}

impl TempDb {
    /// Waits (default timeout) until the PHP example's `outbox` table holds `rows` rows, all
    /// `done`.
    pub async fn expect_outbox_done(&self, rows: usize) {
        let all_done = vec![vec!["done".to_owned(), rows.to_string()]];
        eventually("every outbox row done", || {
            let seen = self.query("SELECT status, count(*) FROM outbox GROUP BY status");
            (seen == all_done, format!("{seen:?}"))
        })
        .await;
    }
}

impl Drop for TempDb {
    fn drop(&mut self) {
        let sql = match self.server {
            Server::Postgres => format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.name),
            Server::Mariadb => format!("DROP DATABASE IF EXISTS {}", self.name),
        };
        let _ = self.client(None).args([self.flag(), &sql]).output();
    }
}

/// `examples/php` in the workspace.
/// An application database `app.db` in `host`'s directory with an `outbox` table (`id`,
/// `event_type`, `payload`, `status` defaulting to `pending`, and a text column `column`),
/// relayed as the SQLite source `shop` polled every 20 ms with `role` mapped to `column`
/// (`deliver_at`, `traceparent`, …). The connection is the application's.
pub fn sqlite_outbox_with(host: &mut Host, column: &str, role: &str) -> (PathBuf, rusqlite::Connection) {
    let app_db = host.dir().join("app.db");
    let app = rusqlite::Connection::open(&app_db).expect("open app.db");
    app.execute_batch(&format!(
        "CREATE TABLE outbox (id INTEGER PRIMARY KEY, event_type TEXT NOT NULL, payload TEXT NOT NULL,
                              status TEXT NOT NULL DEFAULT 'pending', {column} TEXT)"
    ))
    .expect("schema");
    host.add_source(
        &Source::sqlite("shop", &app_db)
            .set("poll_interval_ms", 20)
            .column(role, column),
    );
    (app_db, app)
}

pub fn php_example_dir() -> PathBuf {
    workspace_root().join("examples").join("php")
}

/// Runs the PHP example producer (`php producer.php COUNT DSN [USER]`) to completion on a
/// blocking thread; panics with its output if it fails.
pub async fn run_php_producer(count: usize, dsn: &str, user: Option<&str>) {
    let mut cmd = Command::new("php");
    cmd.arg(php_example_dir().join("producer.php"))
        .arg(count.to_string())
        .arg(dsn);
    if let Some(u) = user {
        cmd.arg(u);
    }
    tokio::task::spawn_blocking(move || check(cmd.output(), "php producer.php"))
        .await
        .expect("php producer task");
}

/// Two PHP example producers at once, as two PHP requests would be, writing `orders` orders
/// between them (half each).
pub async fn run_two_php_producers(orders: usize, dsn: &str, user: Option<&str>) {
    tokio::join!(
        run_php_producer(orders / 2, dsn, user),
        run_php_producer(orders - orders / 2, dsn, user)
    );
}

/// Waits (default timeout) until each of `paths` has received `orders` requests, then asserts
/// that they carry the order ids `1..=orders`, each exactly once.
pub async fn expect_every_order_once(rx: &Receiver, host: &Host, paths: &[&str], orders: usize) {
    for path in paths {
        rx.wait_for(path, orders, default_timeout())
            .await
            .unwrap_or_else(|e| panic!("{path}: {e}\n{}", host.stderr_tail(40)));
    }
    let expected: std::collections::BTreeSet<i64> = (1..=orders as i64).collect();
    for path in paths {
        let ids: std::collections::BTreeSet<i64> = rx
            .requests_at(path)
            .iter()
            .map(|r| r.json()["data"]["order_id"].as_i64().expect("order_id in payload"))
            .collect();
        assert_eq!(ids, expected, "{path}: every order once");
        assert_eq!(rx.count_at(path), orders, "{path}: no order twice");
    }
}

/// Milliseconds since the epoch of a wall-clock time.
fn epoch_ms(t: std::time::SystemTime) -> i64 {
    t.duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// Asserts what a source's `deliver_at` column does: of two rows written together, the one
/// with payload `{"row": 2}` (no `deliver_at`) reaches `path` at once, before `due_ms`, while
/// the one with `{"row": 1}` (`deliver_at` = `due_ms`) waits; then it arrives, not before
/// `due_ms`.
pub async fn expect_scheduled_row_waits(rx: &Receiver, host: &Host, path: &str, due_ms: i64) {
    let reqs = rx
        .wait_for(path, 1, default_timeout())
        .await
        .unwrap_or_else(|e| panic!("{path}: {e}\n{}", host.stderr_tail(40)));
    assert_eq!(
        reqs[0].json()["data"]["row"],
        2,
        "the unscheduled row first: {}",
        reqs[0]
    );
    let first_at = epoch_ms(reqs[0].received_at_wall);
    assert!(
        first_at < due_ms,
        "the unscheduled row arrived at {first_at}, not before the scheduled one's time {due_ms}"
    );
    assert_eq!(rx.count_at(path), 1, "the scheduled row waits: {}", rx.describe());
    let reqs = rx
        .wait_for(path, 2, default_timeout())
        .await
        .unwrap_or_else(|e| panic!("{path}: {e}\n{}", host.stderr_tail(40)));
    assert_eq!(reqs[1].json()["data"]["row"], 1, "{}", reqs[1]);
    let at = epoch_ms(reqs[1].received_at_wall);
    assert!(at >= due_ms, "delivered at {at}, before its deliver_at {due_ms}");
}
