//! [`Host`]: the real `outboxd` binary, run in a fresh temporary directory.
//!
//! A `Host` owns a temp dir laid out like a user's installation:
//!
//! ```text
//! <tmp>/outboxd.toml          service config (listen = "127.0.0.1:0")
//! <tmp>/outboxd.db            database (SQLite; with `OUTBOXD_TEST_STORE=postgres` a
//!                             PostgreSQL database of its own instead, see `database`)
//! <tmp>/plugins.d/*.wasm      components, copied from the plugins build
//! <tmp>/plugins.d/*.toml      target manifests
//! <tmp>/outboxd.stderr.log    the child's stderr, across restarts
//! ```
//!
//! `start()` spawns `outboxd serve --config <tmp>/outboxd.toml`, waits for the
//! `listening on ADDR` line on stdout and talks to the HTTP API at that
//! address. The child is killed when the `Host` is dropped; if the test is
//! panicking at that moment, the child's stderr is printed so that failures
//! are diagnosable from CI logs.

use std::collections::BTreeSet;
use std::fmt;
use std::fs;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use nix::sys::signal::{self, Signal};
use nix::unistd::Pid;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};
use tokio::sync::oneshot;

use crate::database::{StoreKind, TestDatabase};
use crate::{artifacts, scaled};

const CONFIG_FILE: &str = "outboxd.toml";
const DATABASE_FILE: &str = "outboxd.db";
const PLUGINS_DIR: &str = "plugins.d";
const STDERR_FILE: &str = "outboxd.stderr.log";

/// How long `start()` waits for the `listening on` line.
fn start_timeout() -> Duration {
    scaled(Duration::from_secs(90))
}

mod api;
mod target;

pub use target::{Breaker, Retry, RetryBudget, Target};

/// Why `outboxd serve` did not come up.
#[derive(Debug)]
pub enum StartError {
    /// The process could not be spawned.
    Spawn(String),
    /// The process exited before printing `listening on`.
    Exited {
        /// Its exit status.
        status: ExitStatus,
        /// Everything it wrote on stderr (this run).
        stderr: String,
        /// Everything it wrote on stdout.
        stdout: String,
    },
    /// No `listening on` line within the timeout (the process was killed).
    Timeout {
        /// How long it waited.
        after: Duration,
        /// Everything it wrote on stderr (this run).
        stderr: String,
    },
}

impl fmt::Display for StartError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StartError::Spawn(e) => write!(f, "cannot spawn outboxd: {e}"),
            StartError::Exited { status, stderr, stdout } => write!(
                f,
                "outboxd serve exited ({status}) before listening\n--- stderr ---\n{stderr}\n--- stdout ---\n{stdout}"
            ),
            StartError::Timeout { after, stderr } => write!(
                f,
                "outboxd serve printed no `listening on` line within {after:?}\n--- stderr ---\n{stderr}"
            ),
        }
    }
}

impl std::error::Error for StartError {}

/// The result of running an `outboxd` subcommand to completion.
#[derive(Debug)]
pub struct CliOutput {
    /// Exit status.
    pub status: ExitStatus,
    /// Standard output.
    pub stdout: String,
    /// Standard error.
    pub stderr: String,
}

impl fmt::Display for CliOutput {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "exit: {}\n--- stdout ---\n{}\n--- stderr ---\n{}",
            self.status, self.stdout, self.stderr
        )
    }
}

/// A running (or stopped) `outboxd serve` in its own temporary directory.
pub struct Host {
    dir: Option<tempfile::TempDir>,
    root: PathBuf,
    config: toml::Table,
    extra_config: String,
    plugin_files: BTreeSet<String>,
    child: Option<Child>,
    addr: Option<SocketAddr>,
    stdout_lines: Arc<Mutex<Vec<String>>>,
    stderr_offset: u64,
    starts: usize,
    http: reqwest::Client,
    /// The bearer token the kit's own API calls present, if any ([`Host::set_api_token`]).
    api_token: Option<String>,
    /// Shared by the hosts of one cluster; a PostgreSQL database is dropped with the last.
    database: Arc<TestDatabase>,
    /// Extra environment of `serve` ([`Host::set_env`]).
    env: Vec<(String, String)>,
}

impl Default for Host {
    fn default() -> Self {
        Self::new()
    }
}

impl Host {
    /// A host in a fresh temp dir with test-friendly defaults:
    /// `listen = "127.0.0.1:0"`, `poll_interval_ms = 50`, `shutdown_grace_ms = 3000`, on the
    /// store `OUTBOXD_TEST_STORE` names (see [`crate::database`]).
    pub fn new() -> Self {
        match StoreKind::from_env() {
            StoreKind::Sqlite => Self::with_database(None),
            StoreKind::Postgres => Self::on_postgres(),
        }
    }

    /// A host on a fresh PostgreSQL database of its own, whatever `OUTBOXD_TEST_STORE` says.
    pub fn on_postgres() -> Self {
        Self::with_database(Some(Arc::new(TestDatabase::postgres())))
    }

    /// Another host (its own directory, plugins and API) on `other`'s PostgreSQL database: a
    /// cluster. Its targets must be added as for any host.
    ///
    /// # Panics
    /// If `other` runs on SQLite, which one host owns at a time.
    pub fn sharing_database(other: &Host) -> Self {
        assert_eq!(
            other.database.kind(),
            StoreKind::Postgres,
            "only a PostgreSQL database can be shared by several hosts"
        );
        Self::with_database(Some(Arc::clone(&other.database)))
    }

    fn with_database(database: Option<Arc<TestDatabase>>) -> Self {
        let dir = tempfile::Builder::new()
            .prefix("outboxd-e2e-")
            .tempdir()
            .expect("create a temp dir");
        let root = dir.path().to_path_buf();
        fs::create_dir_all(root.join(PLUGINS_DIR)).expect("create plugins dir");
        let mut config = toml::Table::new();
        config.insert("listen".into(), "127.0.0.1:0".into());
        let database = database.unwrap_or_else(|| Arc::new(TestDatabase::sqlite(&root.join(DATABASE_FILE))));
        crate::database::check_pg_opt_out(database.kind());
        match database.kind() {
            StoreKind::Sqlite => {
                config.insert("database".into(), DATABASE_FILE.into());
            }
            StoreKind::Postgres => {
                config.insert("database".into(), database.config_value().into());
                // No start-up recovery on a shared store: a killed host's leases expire. A
                // short margin keeps the tests that kill hosts quick.
                config.insert("lease_margin_ms".into(), 3000.into());
            }
        }
        config.insert("plugins_dir".into(), PLUGINS_DIR.into());
        config.insert("poll_interval_ms".into(), 50.into());
        config.insert("shutdown_grace_ms".into(), 3000.into());
        // Compiled plugins are shared by every test host (entries are keyed by content hash,
        // written atomically): large components compile once per run, not once per test.
        let cache = artifacts::target_dir().join("outboxd-test-cache");
        config.insert("cache_dir".into(), cache.display().to_string().into());
        let http = reqwest::Client::builder()
            .timeout(scaled(Duration::from_secs(20)))
            .build()
            .expect("build HTTP client");
        Self {
            dir: Some(dir),
            root,
            config,
            extra_config: String::new(),
            plugin_files: BTreeSet::new(),
            child: None,
            addr: None,
            stdout_lines: Arc::default(),
            stderr_offset: 0,
            starts: 0,
            http,
            api_token: None,
            database,
            env: Vec::new(),
        }
    }

    /// The temp dir.
    pub fn dir(&self) -> &Path {
        &self.root
    }

    /// `<dir>/outboxd.toml`.
    pub fn config_path(&self) -> PathBuf {
        self.root.join(CONFIG_FILE)
    }

    /// `<dir>/plugins.d`.
    pub fn plugins_dir(&self) -> PathBuf {
        self.root.join(PLUGINS_DIR)
    }

    /// `<dir>/outboxd.db`.
    pub fn db_path(&self) -> PathBuf {
        self.root.join(DATABASE_FILE)
    }

    /// Set a key of `outboxd.toml` (written at the next start).
    pub fn set_config(&mut self, key: &str, value: impl Into<toml::Value>) -> &mut Self {
        self.config.insert(key.to_owned(), value.into());
        self
    }

    /// Set an environment variable of `serve` (from the next start on).
    pub fn set_env(&mut self, name: &str, value: &str) -> &mut Self {
        self.env.retain(|(n, _)| n != name);
        self.env.push((name.to_owned(), value.to_owned()));
        self
    }

    /// Append raw text to `outboxd.toml` (for testing invalid configs).
    pub fn append_config_raw(&mut self, text: &str) -> &mut Self {
        self.extra_config.push_str(text);
        if !text.ends_with('\n') {
            self.extra_config.push('\n');
        }
        self
    }

    /// Add a `[[sources]]` entry to `outboxd.toml` (written at the next start).
    pub fn add_source(&mut self, source: &crate::sources::Source) -> &mut Self {
        self.config
            .entry("sources")
            .or_insert_with(|| toml::Value::Array(Vec::new()))
            .as_array_mut()
            .expect("sources is an array")
            .push(toml::Value::Table(source.to_table()));
        self
    }

    /// The `[api]` table of `outboxd.toml`, created if need be.
    fn api_table(&mut self) -> &mut toml::Table {
        self.config
            .entry("api")
            .or_insert_with(|| toml::Value::Table(toml::Table::new()))
            .as_table_mut()
            .expect("[api] is a table")
    }

    /// Add an API token (`[[api.tokens]]`) with these scopes (`ingest`, `read`, `admin`).
    /// The kit's own calls do not present it unless told to by [`Host::set_api_token`].
    pub fn add_api_token(&mut self, name: &str, token: &str, scopes: &[&str]) -> &mut Self {
        let mut entry = toml::Table::new();
        entry.insert("name".into(), name.into());
        entry.insert("token".into(), token.into());
        entry.insert("scopes".into(), scopes.to_vec().into());
        self.api_table()
            .entry("tokens")
            .or_insert_with(|| toml::Value::Array(Vec::new()))
            .as_array_mut()
            .expect("api.tokens is an array")
            .push(entry.into());
        self
    }

    /// Set a key of `[api]` (written at the next start).
    pub fn set_api_config(&mut self, key: &str, value: impl Into<toml::Value>) -> &mut Self {
        self.api_table().insert(key.to_owned(), value.into());
        self
    }

    /// Remove every `[[api.tokens]]` entry.
    pub fn clear_api_tokens(&mut self) -> &mut Self {
        self.api_table().remove("tokens");
        self
    }

    /// Set `[api] open`: the paths served without a token although tokens are configured.
    pub fn set_api_open(&mut self, paths: &[&str]) -> &mut Self {
        self.api_table().insert("open".into(), paths.to_vec().into());
        self
    }

    /// The bearer token every API call of the kit presents from now on (`post_event`,
    /// `get_json`, `wait_for_targets`, …).
    pub fn set_api_token(&mut self, token: &str) -> &mut Self {
        self.api_token = Some(token.to_owned());
        self
    }

    /// Add target `name`: writes `plugins.d/<name>.toml` now; its component is
    /// copied from the plugins build before the next start.
    pub fn add_target(&mut self, name: &str, target: &Target) -> &mut Self {
        self.add_target_raw(name, &target.plugin.clone(), &target.to_toml())
    }

    /// Add target `name` with a raw manifest text; `plugin_file` (a built
    /// component's file name, or `""` for none) is copied into `plugins.d`.
    pub fn add_target_raw(&mut self, name: &str, plugin_file: &str, manifest: &str) -> &mut Self {
        if !plugin_file.is_empty() {
            self.plugin_files.insert(plugin_file.to_owned());
        }
        let path = self.plugins_dir().join(format!("{name}.toml"));
        fs::write(&path, manifest).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
        self
    }

    /// Add target `name` whose component is `bytes` rather than a built plugin: writes the
    /// manifest and `plugins.d/<target.plugin>` now.
    pub fn add_target_component(&mut self, name: &str, target: &Target, bytes: &[u8]) -> &mut Self {
        self.add_target_raw(name, "", &target.to_toml());
        let path = self.plugins_dir().join(&target.plugin);
        fs::write(&path, bytes).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
        self
    }

    /// Add a webhook target per `(name, event globs)`, each posting to `rx` at `/<name>`.
    pub fn add_webhooks(&mut self, rx: &crate::Receiver, targets: &[(&str, &[&str])]) -> &mut Self {
        for (name, events) in targets {
            self.add_target(name, &Target::webhook(&rx.url(&format!("/{name}"))).events(events));
        }
        self
    }

    /// Deploys `bytes` as `plugins.d/<file>` the atomic way, as a running host should be given
    /// a new plugin: write a temporary file beside it (a name the host ignores), flush it to
    /// disk, rename it over `file`. Returns the moment right after the rename.
    pub fn deploy(&self, file: &str, bytes: &[u8]) -> std::time::Instant {
        use std::io::Write as _;
        let dir = self.plugins_dir();
        let tmp = dir.join(format!(".{file}.{}.tmp", std::process::id()));
        {
            let mut f = fs::File::create(&tmp).unwrap_or_else(|e| panic!("create {}: {e}", tmp.display()));
            f.write_all(bytes)
                .and_then(|()| f.sync_all())
                .unwrap_or_else(|e| panic!("write {}: {e}", tmp.display()));
        }
        let dst = dir.join(file);
        fs::rename(&tmp, &dst).unwrap_or_else(|e| panic!("rename {} to {}: {e}", tmp.display(), dst.display()));
        std::time::Instant::now()
    }

    /// Add a bare component `plugins.d/<name>.wasm` (no manifest): a target
    /// `name` with default settings. `plugin_file` is a built component.
    pub fn add_bare_plugin(&mut self, name: &str, plugin_file: &str) -> &mut Self {
        let src = artifacts::plugin(plugin_file);
        let dst = self.plugins_dir().join(format!("{name}.wasm"));
        fs::copy(&src, &dst).unwrap_or_else(|e| panic!("copy {} to {}: {e}", src.display(), dst.display()));
        self
    }

    /// Remove target `name`'s manifest (takes effect at the next start or reload).
    pub fn remove_target(&mut self, name: &str) -> &mut Self {
        let _ = fs::remove_file(self.plugins_dir().join(format!("{name}.toml")));
        self
    }

    /// Write `outboxd.toml` now, as configured so far (a running host reads it at its next
    /// `SIGHUP`, see [`Host::sighup`]).
    pub fn write_config(&self) {
        let mut text = toml::to_string(&self.config).expect("config serialises");
        text.push_str(&self.extra_config);
        fs::write(self.config_path(), text).expect("write outboxd.toml");
    }

    /// Write `outboxd.toml` and copy the needed components into `plugins.d`.
    fn prepare(&mut self) {
        self.write_config();
        for file in &self.plugin_files {
            let dst = self.plugins_dir().join(file);
            if dst.exists() {
                continue;
            }
            let src = artifacts::plugin(file);
            fs::copy(&src, &dst).unwrap_or_else(|e| panic!("copy {} to {}: {e}", src.display(), dst.display()));
        }
    }

    async fn prepare_async(&mut self) -> PathBuf {
        // Locating the artifacts may run cargo builds: keep them off the runtime.
        let files: Vec<String> = self.plugin_files.iter().cloned().collect();
        let bin = tokio::task::spawn_blocking(move || {
            for f in &files {
                artifacts::plugin(f);
            }
            artifacts::outboxd_bin().to_path_buf()
        })
        .await
        .unwrap_or_else(|e| std::panic::resume_unwind(e.into_panic()));
        self.prepare();
        bin
    }

    /// Whether the child is running (as far as we know).
    pub fn is_running(&mut self) -> bool {
        match &mut self.child {
            Some(c) => matches!(c.try_wait(), Ok(None)),
            None => false,
        }
    }

    /// Start `outboxd serve`; panics (with its stderr) if it does not come up.
    pub async fn start(&mut self) -> &mut Self {
        if let Err(e) = self.try_start().await {
            panic!("{e}\n(test dir: {})", self.root.display());
        }
        self
    }

    /// Start `outboxd serve` and wait for its `listening on` line.
    pub async fn try_start(&mut self) -> Result<SocketAddr, StartError> {
        assert!(
            !self.is_running(),
            "outboxd is already running; stop it first or use restart()"
        );
        let bin = self.prepare_async().await;
        self.starts += 1;
        let stderr_path = self.root.join(STDERR_FILE);
        let mut stderr_file = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&stderr_path)
            .map_err(|e| StartError::Spawn(format!("open {}: {e}", stderr_path.display())))?;
        {
            use std::io::Write as _;
            let _ = writeln!(stderr_file, "===== testkit: start #{} =====", self.starts);
        }
        self.stderr_offset = fs::metadata(&stderr_path).map(|m| m.len()).unwrap_or(0);
        let mut cmd = Command::new(&bin);
        cmd.arg("serve")
            .arg("--config")
            .arg(self.config_path())
            .current_dir(&self.root)
            .env("RUST_BACKTRACE", "1")
            .env("NO_COLOR", "1")
            .envs(self.env.iter().map(|(n, v)| (n, v)))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::from(stderr_file))
            .kill_on_drop(true);
        let mut child = cmd
            .spawn()
            .map_err(|e| StartError::Spawn(format!("{}: {e}", bin.display())))?;
        let stdout = child.stdout.take().expect("stdout is piped");
        let (tx, rx) = oneshot::channel::<SocketAddr>();
        let lines = self.stdout_lines.clone();
        tokio::spawn(async move {
            let mut tx = Some(tx);
            let mut reader = BufReader::new(stdout).lines();
            while let Ok(Some(line)) = reader.next_line().await {
                if let Some(addr) = parse_listening(&line)
                    && let Some(tx) = tx.take()
                {
                    let _ = tx.send(addr);
                }
                lines.lock().unwrap_or_else(|e| e.into_inner()).push(line);
            }
        });
        let timeout = start_timeout();
        let outcome = tokio::select! {
            addr = rx => Ok(addr),
            status = child.wait() => Err(status),
            () = tokio::time::sleep(timeout) => Err(Err(std::io::Error::other("timeout"))),
        };
        match outcome {
            Ok(Ok(addr)) => {
                self.addr = Some(addr);
                self.child = Some(child);
                Ok(addr)
            }
            // The stdout reader ended without a `listening on` line: the
            // process is exiting (or closed stdout); report how it ended.
            Ok(Err(_)) => {
                let status = tokio::time::timeout(scaled(Duration::from_secs(10)), child.wait())
                    .await
                    .ok()
                    .and_then(Result::ok);
                match status {
                    Some(status) => Err(self.exited(status).await),
                    None => {
                        let _ = child.start_kill();
                        Err(StartError::Timeout {
                            after: timeout,
                            stderr: self.stderr_this_run(),
                        })
                    }
                }
            }
            Err(Ok(status)) => Err(self.exited(status).await),
            Err(Err(_)) => {
                let _ = child.start_kill();
                let _ = child.wait().await;
                Err(StartError::Timeout {
                    after: timeout,
                    stderr: self.stderr_this_run(),
                })
            }
        }
    }

    async fn exited(&self, status: ExitStatus) -> StartError {
        // Give the stdout reader a moment to drain what was printed.
        tokio::time::sleep(Duration::from_millis(50)).await;
        StartError::Exited {
            status,
            stderr: self.stderr_this_run(),
            stdout: self.stdout(),
        }
    }

    /// Everything the child printed on stdout (all runs).
    pub fn stdout(&self) -> String {
        self.stdout_lines.lock().unwrap_or_else(|e| e.into_inner()).join("\n")
    }

    /// Everything the child wrote on stderr (all runs, with separators).
    pub fn stderr(&self) -> String {
        fs::read(self.root.join(STDERR_FILE))
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or_default()
    }

    /// What the current (or last) run wrote on stderr.
    pub fn stderr_this_run(&self) -> String {
        let all = fs::read(self.root.join(STDERR_FILE)).unwrap_or_default();
        let from = (self.stderr_offset as usize).min(all.len());
        String::from_utf8_lossy(&all[from..]).into_owned()
    }

    /// The last `max_lines` lines of stderr, for failure messages.
    pub fn stderr_tail(&self, max_lines: usize) -> String {
        let all = self.stderr();
        let lines: Vec<&str> = all.lines().collect();
        let from = lines.len().saturating_sub(max_lines);
        lines[from..].join("\n")
    }

    /// Wait until the child's stderr (this run) contains every needle, or the timeout passes.
    pub async fn wait_for_stderr(&self, needles: &[&str], timeout: Duration) -> Result<String, String> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let err = self.stderr_this_run();
            if needles.iter().all(|n| err.contains(n)) {
                return Ok(err);
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(err);
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The API address of the running host.
    ///
    /// # Panics
    /// If the host has not been started.
    pub fn addr(&self) -> SocketAddr {
        self.addr.expect("host not started")
    }

    /// `http://ADDR{path}`.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr(), path)
    }

    /// The child's process id.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().and_then(Child::id)
    }

    fn signal(&self, sig: Signal) {
        let pid = self.pid().expect("outboxd is not running");
        let pid = i32::try_from(pid).expect("pid fits i32");
        signal::kill(Pid::from_raw(pid), sig).unwrap_or_else(|e| panic!("kill -{sig} {pid}: {e}"));
    }

    /// `kill -9` the child and reap it.
    pub async fn kill_9(&mut self) -> ExitStatus {
        self.signal(Signal::SIGKILL);
        let mut child = self.child.take().expect("running");
        let status = child.wait().await.expect("wait for outboxd");
        self.addr = None;
        status
    }

    async fn stop_with(&mut self, sig: Signal) -> ExitStatus {
        self.signal(sig);
        let grace = self
            .config
            .get("shutdown_grace_ms")
            .and_then(toml::Value::as_integer)
            .unwrap_or(10_000);
        let limit = Duration::from_millis(grace.max(0) as u64) + scaled(Duration::from_secs(20));
        let mut child = self.child.take().expect("running");
        match tokio::time::timeout(limit, child.wait()).await {
            Ok(status) => {
                self.addr = None;
                status.expect("wait for outboxd")
            }
            Err(_) => {
                let _ = child.start_kill();
                let _ = child.wait().await;
                panic!(
                    "outboxd did not exit within {limit:?} of {sig}\n--- stderr (tail) ---\n{}",
                    self.stderr_tail(80)
                );
            }
        }
    }

    /// Send SIGTERM and wait for the exit (panics if it takes longer than the
    /// grace period plus a margin).
    pub async fn sigterm(&mut self) -> ExitStatus {
        self.stop_with(Signal::SIGTERM).await
    }

    /// Send SIGINT and wait for the exit.
    pub async fn sigint(&mut self) -> ExitStatus {
        self.stop_with(Signal::SIGINT).await
    }

    /// Send SIGHUP (reload `outboxd.toml`); the host keeps running.
    pub fn sighup(&self) {
        self.signal(Signal::SIGHUP);
    }

    /// SIGTERM and assert a clean (code 0) exit.
    pub async fn stop(&mut self) {
        let status = self.sigterm().await;
        assert!(
            status.success(),
            "outboxd exited with {status} after SIGTERM\n--- stderr (tail) ---\n{}",
            self.stderr_tail(80)
        );
    }

    /// Start again in the same directory (stopping gracefully first if running).
    pub async fn restart(&mut self) -> &mut Self {
        if self.is_running() {
            self.stop().await;
        }
        self.child = None;
        self.start().await
    }

    /// Which store this host runs on.
    pub fn store_kind(&self) -> StoreKind {
        self.database.kind()
    }

    /// The test database (shared by the hosts of a cluster).
    pub fn database(&self) -> &TestDatabase {
        &self.database
    }

    /// Runs `sql` on the database, whichever store it is: every row as text (see
    /// [`TestDatabase::query`]).
    pub fn sql(&self, sql: &str) -> Vec<Vec<String>> {
        self.database.query(sql)
    }

    /// The single integer `sql` returns, whichever store it is.
    pub fn sql_i64(&self, sql: &str) -> i64 {
        self.database.query_i64(sql)
    }

    /// A read-only connection to the SQLite database (5 s busy timeout).
    ///
    /// # Panics
    /// On PostgreSQL: use [`Host::sql`], which works on both.
    pub fn db(&self) -> rusqlite::Connection {
        assert_eq!(
            self.database.kind(),
            StoreKind::Sqlite,
            "Host::db() is SQLite only; use Host::sql()"
        );
        let conn = rusqlite::Connection::open_with_flags(
            self.db_path(),
            rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY | rusqlite::OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )
        .unwrap_or_else(|e| panic!("open {} read-only: {e}", self.db_path().display()));
        conn.busy_timeout(Duration::from_secs(5)).expect("set busy timeout");
        conn
    }

    /// `SELECT count(*) FROM <table>`, whichever store it is.
    pub fn count_rows(&self, table: &str) -> i64 {
        self.sql_i64(&format!("SELECT count(*) FROM {table}"))
    }

    /// Run `outboxd <args[0]> --config <dir>/outboxd.toml <args[1..]>` to completion.
    /// For the commands with subcommands of their own (`dead list|replay`, `replay status`,
    /// `target pause|resume`), `--config` follows the subcommand:
    /// `run_cli(&["dead", "replay", "--target", "crm"])`.
    pub async fn run_cli(&mut self, args: &[&str]) -> CliOutput {
        assert!(!args.is_empty(), "run_cli needs a subcommand");
        let bin = self.prepare_async().await;
        let words = if matches!(args[0], "dead" | "target" | "source" | "config" | "replay") && args.len() > 1 {
            2
        } else {
            1
        };
        let mut cmd = Command::new(&bin);
        cmd.args(&args[..words])
            .arg("--config")
            .arg(self.config_path())
            .args(&args[words..])
            .current_dir(&self.root)
            .stdin(Stdio::null())
            .kill_on_drop(true);
        let limit = scaled(Duration::from_secs(60));
        let out = tokio::time::timeout(limit, cmd.output())
            .await
            .unwrap_or_else(|_| panic!("outboxd {args:?} did not finish within {limit:?}"))
            .unwrap_or_else(|e| panic!("run {}: {e}", bin.display()));
        CliOutput {
            status: out.status,
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }
}

/// `listening on 127.0.0.1:PORT` (tolerating an `http://` prefix or a trailing `/`).
fn parse_listening(line: &str) -> Option<SocketAddr> {
    let rest = line.split_once("listening on ")?.1.trim();
    let rest = rest.strip_prefix("http://").unwrap_or(rest);
    let rest = rest.split_whitespace().next()?.trim_end_matches('/');
    rest.parse().ok()
}

impl Drop for Host {
    fn drop(&mut self) {
        if let Some(child) = &mut self.child {
            let _ = child.start_kill();
        }
        if std::thread::panicking() && self.starts > 0 {
            let keep = std::env::var("OUTBOXD_KEEP_TEST_DIR").is_ok_and(|v| !v.is_empty() && v != "0");
            eprintln!(
                "\n===== outboxd stderr ({}) =====\n{}\n===== outboxd stdout =====\n{}\n===== end of outboxd output{} =====",
                self.root.join(STDERR_FILE).display(),
                self.stderr_tail(300),
                self.stdout(),
                if keep { "; test dir kept" } else { "" }
            );
            if keep && let Some(dir) = self.dir.take() {
                let _ = dir.keep();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_listening_lines() {
        let a: SocketAddr = "127.0.0.1:4321".parse().unwrap();
        assert_eq!(parse_listening("listening on 127.0.0.1:4321"), Some(a));
        assert_eq!(parse_listening("listening on http://127.0.0.1:4321/"), Some(a));
        assert_eq!(parse_listening("starting"), None);
    }

    #[test]
    fn api_tokens_and_sources_serialise_into_outboxd_toml() {
        let mut host = Host::with_database(Some(Arc::new(TestDatabase::sqlite(Path::new("x.db")))));
        host.add_api_token("ops", "secret", &["admin"])
            .add_api_token("ro", "other", &["read"])
            .set_api_open(&["/healthz"])
            .add_source(
                &crate::sources::Source::sqlite("shop", Path::new("/tmp/app.db"))
                    .set("poll_interval_ms", 20)
                    .column("status", ""),
            );
        let parsed: toml::Table = toml::to_string(&host.config)
            .expect("config serialises")
            .parse()
            .expect("valid TOML");
        assert_eq!(parsed["api"]["open"].as_array().map(Vec::len), Some(1));
        assert_eq!(parsed["api"]["tokens"][1]["name"].as_str(), Some("ro"));
        assert_eq!(parsed["api"]["tokens"][0]["scopes"][0].as_str(), Some("admin"));
        let shop = &parsed["sources"][0];
        assert_eq!(shop["kind"].as_str(), Some("sqlite"));
        assert_eq!(shop["path"].as_str(), Some("/tmp/app.db"));
        assert_eq!(shop["poll_interval_ms"].as_integer(), Some(20));
        assert_eq!(shop["columns"]["status"].as_str(), Some(""));
    }
}
