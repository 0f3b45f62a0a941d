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
use serde::Serialize;
use serde_json::Value;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};
use tokio::sync::oneshot;

use crate::database::{StoreKind, TestDatabase};
use crate::{artifacts, default_timeout, scaled};

const CONFIG_FILE: &str = "outboxd.toml";
const DATABASE_FILE: &str = "outboxd.db";
const PLUGINS_DIR: &str = "plugins.d";
const STDERR_FILE: &str = "outboxd.stderr.log";

/// How long `start()` waits for the `listening on` line.
fn start_timeout() -> Duration {
    scaled(Duration::from_secs(90))
}

/// The `[retry]` table of a target manifest.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Retry {
    /// `max_attempts`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_attempts: Option<u32>,
    /// `initial_backoff_ms`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub initial_backoff_ms: Option<u64>,
    /// `max_backoff_ms`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_backoff_ms: Option<u64>,
    /// `multiplier`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub multiplier: Option<f64>,
}

/// The `[breaker]` table of a target manifest.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Breaker {
    /// `failures`: consecutive retryable failures that open the breaker (0 disables it).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub failures: Option<u32>,
    /// `cooldown_ms`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cooldown_ms: Option<u64>,
    /// `retry_after`: what a receiver's `Retry-After` pauses, `target` or `delivery`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub retry_after: Option<String>,
}

/// The `[retry_budget]` table of a target manifest: how much retries may add to first
/// attempts while the receiver is under pressure.
#[derive(Clone, Debug, Default, Serialize)]
pub struct RetryBudget {
    /// `enabled`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub enabled: Option<bool>,
    /// `ratio`: retries per first attempt over the window.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ratio: Option<f64>,
    /// `min_per_sec`: retries a second allowed whatever the first attempts.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub min_per_sec: Option<f64>,
    /// `window_ms`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub window_ms: Option<u64>,
}

/// A target manifest (`plugins.d/<name>.toml`), serialised as TOML.
#[derive(Clone, Debug, Serialize)]
pub struct Target {
    /// Component file, relative to the plugins dir (e.g. `webhook.wasm`).
    pub plugin: String,
    /// Event type globs.
    pub events: Vec<String>,
    /// `filter`: a CEL expression over `payload`, `headers` and `event_type`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub filter: Option<String>,
    /// `timeout_ms`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub timeout_ms: Option<u64>,
    /// `concurrency`: the ceiling of the adaptive limit, or the fixed number of attempts at
    /// once with `concurrency_mode = "fixed"`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub concurrency: Option<u32>,
    /// `concurrency_mode`: `adaptive` (the default) or `fixed`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub concurrency_mode: Option<String>,
    /// `memory_mb`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub memory_mb: Option<u32>,
    /// `allowed_hosts` (`host:port`).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub allowed_hosts: Vec<String>,
    /// `allow_private`: names in `allowed_hosts` may resolve to private addresses.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub allow_private: Option<bool>,
    /// `class`: `critical`, `best-effort`, `slow` or `batched`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub class: Option<String>,
    /// `ordered`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ordered: Option<bool>,
    /// `rate_per_sec`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rate_per_sec: Option<f64>,
    /// `max_batch` (batched class).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_batch: Option<u32>,
    /// `linger_ms` (batched class).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub linger_ms: Option<u64>,
    /// `instance_reuse`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub instance_reuse: Option<u32>,
    /// `[retry]`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub retry: Option<Retry>,
    /// `[breaker]`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub breaker: Option<Breaker>,
    /// `[retry_budget]`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub retry_budget: Option<RetryBudget>,
    /// `[config]`, handed to the plugin.
    #[serde(skip_serializing_if = "toml::Table::is_empty")]
    pub config: toml::Table,
    /// `[headers]`, set by the host on every request of the plugin.
    #[serde(skip_serializing_if = "toml::Table::is_empty")]
    pub headers: toml::Table,
    /// `[oauth2]`: client credentials the host gets a bearer token with.
    #[serde(skip_serializing_if = "toml::Table::is_empty")]
    pub oauth2: toml::Table,
    /// `[tls]`: the client certificate and private CA of the target's requests.
    #[serde(skip_serializing_if = "toml::Table::is_empty")]
    pub tls: toml::Table,
}

impl Target {
    /// A target of component `plugin` receiving every event type.
    pub fn new(plugin: &str) -> Self {
        Self {
            plugin: plugin.to_owned(),
            events: vec!["*".to_owned()],
            filter: None,
            timeout_ms: None,
            concurrency: None,
            concurrency_mode: None,
            memory_mb: None,
            allowed_hosts: Vec::new(),
            allow_private: None,
            class: None,
            ordered: None,
            rate_per_sec: None,
            max_batch: None,
            linger_ms: None,
            instance_reuse: None,
            retry: None,
            breaker: None,
            retry_budget: None,
            config: toml::Table::new(),
            headers: toml::Table::new(),
            oauth2: toml::Table::new(),
            tls: toml::Table::new(),
        }
    }

    /// A `webhook.wasm` target posting to `url`, with `url`'s `host:port`
    /// allowed.
    pub fn webhook(url: &str) -> Self {
        let mut t = Self::new("webhook.wasm").config("url", url);
        if let Some(authority) = authority_of(url) {
            t.allowed_hosts.push(authority);
        }
        t
    }

    /// A `webhook_batch.wasm` target (world `batch-target`, `class = "batched"`)
    /// posting batches to `url`, with `url`'s `host:port` allowed.
    pub fn webhook_batch(url: &str) -> Self {
        let mut t = Self::webhook(url).class("batched");
        t.plugin = "webhook_batch.wasm".to_owned();
        t
    }

    /// A `misbehave.wasm` target in `mode` (`loop`, `call`, `trap`, `grow`, `ok`, `permanent`,
    /// `count`, …: see `plugins/misbehave`).
    pub fn misbehave(mode: &str) -> Self {
        Self::new("misbehave.wasm").config("mode", mode)
    }

    /// Replace the event globs.
    pub fn events(mut self, globs: &[&str]) -> Self {
        self.events = globs.iter().map(|g| (*g).to_owned()).collect();
        self
    }

    /// Set `filter`.
    pub fn filter(mut self, expression: &str) -> Self {
        self.filter = Some(expression.to_owned());
        self
    }

    /// Set `timeout_ms`.
    pub fn timeout_ms(mut self, ms: u64) -> Self {
        self.timeout_ms = Some(ms);
        self
    }

    /// Set `concurrency`.
    pub fn concurrency(mut self, n: u32) -> Self {
        self.concurrency = Some(n);
        self
    }

    /// Set `concurrency_mode`: `adaptive` or `fixed`.
    pub fn concurrency_mode(mut self, mode: &str) -> Self {
        self.concurrency_mode = Some(mode.to_owned());
        self
    }

    /// Set the whole `[retry_budget]` table.
    pub fn retry_budget(mut self, budget: RetryBudget) -> Self {
        self.retry_budget = Some(budget);
        self
    }

    /// Set `memory_mb`.
    pub fn memory_mb(mut self, mb: u32) -> Self {
        self.memory_mb = Some(mb);
        self
    }

    /// Add a `host:port` to `allowed_hosts`.
    pub fn allow(mut self, authority: &str) -> Self {
        self.allowed_hosts.push(authority.to_owned());
        self
    }

    /// Set `allow_private`.
    pub fn allow_private(mut self, allow: bool) -> Self {
        self.allow_private = Some(allow);
        self
    }

    /// Replace `allowed_hosts`.
    pub fn allowed_hosts(mut self, hosts: &[&str]) -> Self {
        self.allowed_hosts = hosts.iter().map(|h| (*h).to_owned()).collect();
        self
    }

    /// Set the whole `[retry]` table.
    pub fn retry(mut self, max_attempts: u32, initial_backoff_ms: u64, max_backoff_ms: u64) -> Self {
        self.retry = Some(Retry {
            max_attempts: Some(max_attempts),
            initial_backoff_ms: Some(initial_backoff_ms),
            max_backoff_ms: Some(max_backoff_ms),
            multiplier: None,
        });
        self
    }

    /// Set `class` (`critical`, `best-effort`, `slow`, `batched`).
    pub fn class(mut self, class: &str) -> Self {
        self.class = Some(class.to_owned());
        self
    }

    /// Set `ordered`.
    pub fn ordered(mut self, ordered: bool) -> Self {
        self.ordered = Some(ordered);
        self
    }

    /// Set `rate_per_sec`.
    pub fn rate_per_sec(mut self, rate: f64) -> Self {
        self.rate_per_sec = Some(rate);
        self
    }

    /// Set `max_batch` and `linger_ms` (batched class).
    pub fn batch(mut self, max_batch: u32, linger_ms: u64) -> Self {
        self.max_batch = Some(max_batch);
        self.linger_ms = Some(linger_ms);
        self
    }

    /// Set `instance_reuse` (invocations one plugin instance may serve).
    pub fn instance_reuse(mut self, n: u32) -> Self {
        self.instance_reuse = Some(n);
        self
    }

    /// Set the `[breaker]` table's `failures` and `cooldown_ms`.
    pub fn breaker(mut self, failures: u32, cooldown_ms: u64) -> Self {
        let breaker = self.breaker.get_or_insert_with(Breaker::default);
        breaker.failures = Some(failures);
        breaker.cooldown_ms = Some(cooldown_ms);
        self
    }

    /// Set `[breaker] failures` alone (the cool-down stays the default).
    pub fn breaker_failures(mut self, failures: u32) -> Self {
        self.breaker.get_or_insert_with(Breaker::default).failures = Some(failures);
        self
    }

    /// Set `[breaker] cooldown_ms` alone (the failure threshold stays the default).
    pub fn breaker_cooldown_ms(mut self, cooldown_ms: u64) -> Self {
        self.breaker.get_or_insert_with(Breaker::default).cooldown_ms = Some(cooldown_ms);
        self
    }

    /// Set `[breaker] retry_after`: what a receiver's `Retry-After` pauses, `target` or
    /// `delivery`.
    pub fn breaker_retry_after(mut self, what: &str) -> Self {
        self.breaker.get_or_insert_with(Breaker::default).retry_after = Some(what.to_owned());
        self
    }

    /// Quick retries for tests: `initial_backoff_ms = 50`, `max_backoff_ms = 200`.
    pub fn fast_retry(self, max_attempts: u32) -> Self {
        self.retry(max_attempts, 50, 200)
    }

    /// Set a `[config]` value.
    pub fn config(mut self, key: &str, value: impl Into<toml::Value>) -> Self {
        self.config.insert(key.to_owned(), value.into());
        self
    }

    /// Set a `[headers]` value.
    pub fn header(mut self, name: &str, value: impl Into<toml::Value>) -> Self {
        self.headers.insert(name.to_owned(), value.into());
        self
    }

    /// Set an `[oauth2]` value.
    pub fn oauth2(mut self, key: &str, value: impl Into<toml::Value>) -> Self {
        self.oauth2.insert(key.to_owned(), value.into());
        self
    }

    /// Set a `[tls]` value.
    pub fn tls(mut self, key: &str, value: impl Into<toml::Value>) -> Self {
        self.tls.insert(key.to_owned(), value.into());
        self
    }

    /// Set `[config] secret`.
    pub fn secret(self, secret: &str) -> Self {
        self.config("secret", secret)
    }

    /// The manifest text.
    pub fn to_toml(&self) -> String {
        toml::to_string(self).expect("a manifest serialises to TOML")
    }
}

/// `host:port` of an `http://` URL (port 80/443 implied if absent).
fn authority_of(url: &str) -> Option<String> {
    let (scheme, rest) = url.split_once("://")?;
    let authority = rest.split(['/', '?', '#']).next()?;
    if authority.is_empty() {
        return None;
    }
    if authority
        .rsplit_once(':')
        .is_some_and(|(_, p)| p.parse::<u16>().is_ok())
    {
        Some(authority.to_owned())
    } else {
        let port = if scheme == "https" { 443 } else { 80 };
        Some(format!("{authority}:{port}"))
    }
}

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

    /// A request to the API at `path`, with the bearer token of [`Host::set_api_token`] if set.
    fn request(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        let req = self.http.request(method, self.url(path));
        match &self.api_token {
            Some(token) => req.bearer_auth(token),
            None => req,
        }
    }

    async fn send(&self, req: reqwest::RequestBuilder, what: &str) -> (u16, Value) {
        let resp = req
            .send()
            .await
            .unwrap_or_else(|e| panic!("{what}: {e}\n--- stderr (tail) ---\n{}", self.stderr_tail(40)));
        let status = resp.status().as_u16();
        let text = resp.text().await.unwrap_or_default();
        let json = serde_json::from_str(&text).unwrap_or(Value::String(text));
        (status, json)
    }

    /// `POST /v1/events` with a JSON body (an object or an array); returns the
    /// status and the response body (JSON, or a JSON string holding the raw
    /// text if it is not JSON).
    pub async fn post_event(&self, body: &Value) -> (u16, Value) {
        let req = self.request(reqwest::Method::POST, "/v1/events").json(body);
        self.send(req, "POST /v1/events").await
    }

    /// `POST /v1/events` with a JSON body and extra request headers (`traceparent`, …).
    pub async fn post_event_with_headers(&self, body: &Value, headers: &[(&str, &str)]) -> (u16, Value) {
        let mut req = self.request(reqwest::Method::POST, "/v1/events").json(body);
        for (name, value) in headers {
            req = req.header(*name, *value);
        }
        self.send(req, "POST /v1/events").await
    }

    /// `GET <path>` (any API route): status and body.
    pub async fn get_json(&self, path: &str) -> (u16, Value) {
        let req = self.request(reqwest::Method::GET, path);
        self.send(req, &format!("GET {path}")).await
    }

    /// `POST <path>` with a JSON body (any API route): status and body.
    pub async fn post_json(&self, path: &str, body: &Value) -> (u16, Value) {
        let req = self.request(reqwest::Method::POST, path).json(body);
        self.send(req, &format!("POST {path}")).await
    }

    /// `DELETE <path>` (any API route), without a body: with the API's state-change marker
    /// header (as a client of the API sends it), and the token if set. Status and body.
    pub async fn delete(&self, path: &str) -> (u16, Value) {
        let req = self
            .request(reqwest::Method::DELETE, path)
            .header("x-outboxd-request", "testkit");
        self.send(req, &format!("DELETE {path}")).await
    }

    /// `POST /v1/events` with a raw body and content type.
    pub async fn post_raw(&self, body: impl Into<reqwest::Body>, content_type: &str) -> (u16, Value) {
        let req = self
            .request(reqwest::Method::POST, "/v1/events")
            .header("content-type", content_type)
            .body(body);
        self.send(req, "POST /v1/events").await
    }

    /// Post `{"type": event_type, "payload": payload}`, assert 202, return the id.
    pub async fn enqueue(&self, event_type: &str, payload: Value) -> String {
        let (status, body) = self
            .post_event(&serde_json::json!({"type": event_type, "payload": payload}))
            .await;
        assert_eq!(status, 202, "POST /v1/events answered {status}: {body}");
        body["id"]
            .as_str()
            .unwrap_or_else(|| panic!("POST /v1/events answer has no id: {body}"))
            .to_owned()
    }

    /// Post `events` (JSON objects) as one batch, assert 202 and one answer per event; return
    /// their ids in order.
    pub async fn enqueue_batch(&self, events: Vec<Value>) -> Vec<String> {
        let n = events.len();
        let (status, body) = self.post_event(&Value::Array(events)).await;
        assert_eq!(
            status, 202,
            "POST /v1/events (a batch of {n}) answered {status}: {body}"
        );
        let ids: Vec<String> = body
            .as_array()
            .unwrap_or_else(|| panic!("a batch is answered with a list: {body}"))
            .iter()
            .map(|a| a["id"].as_str().unwrap_or_else(|| panic!("no id in {a}")).to_owned())
            .collect();
        assert_eq!(ids.len(), n, "one answer per event: {body}");
        ids
    }

    /// `GET /v1/events/{id}`: status and body.
    pub async fn get_event_raw(&self, id: &str) -> (u16, Value) {
        let req = self.request(reqwest::Method::GET, &format!("/v1/events/{id}"));
        self.send(req, "GET /v1/events/{id}").await
    }

    /// `GET /v1/events/{id}`, asserting 200.
    pub async fn get_event(&self, id: &str) -> Value {
        let (status, body) = self.get_event_raw(id).await;
        assert_eq!(status, 200, "GET /v1/events/{id} answered {status}: {body}");
        body
    }

    /// `GET /v1/targets`, asserting 200.
    pub async fn targets(&self) -> Value {
        let req = self.request(reqwest::Method::GET, "/v1/targets");
        let (status, body) = self.send(req, "GET /v1/targets").await;
        assert_eq!(status, 200, "GET /v1/targets answered {status}: {body}");
        body
    }

    /// `GET /healthz`: status and body; `None` if no answer within `timeout`.
    pub async fn healthz(&self, timeout: Duration) -> Option<(u16, Value)> {
        let req = self.request(reqwest::Method::GET, "/healthz").timeout(timeout);
        let resp = req.send().await.ok()?;
        let status = resp.status().as_u16();
        let text = resp.text().await.unwrap_or_default();
        Some((status, serde_json::from_str(&text).unwrap_or(Value::String(text))))
    }

    /// Poll `GET /v1/events/{id}` until `pred` holds; returns that document.
    ///
    /// # Panics
    /// On timeout, with the last document and the child's stderr.
    pub async fn wait_for(&self, id: &str, timeout: Duration, mut pred: impl FnMut(&Value) -> bool) -> Value {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let (status, body) = self.get_event_raw(id).await;
            if status == 200 && pred(&body) {
                return body;
            }
            let last = if status == 200 {
                body
            } else {
                serde_json::json!({"http_status": status, "body": body})
            };
            if tokio::time::Instant::now() >= deadline {
                panic!(
                    "event {id}: condition not met within {timeout:?}; last document:\n{}\n--- outboxd stderr (tail) ---\n{}",
                    serde_json::to_string_pretty(&last).unwrap_or_default(),
                    self.stderr_tail(60)
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Wait (default timeout) until the event's deliveries to exactly these
    /// targets all have a final status (`delivered` or `dead`).
    pub async fn wait_settled(&self, id: &str, targets: &[&str]) -> Value {
        self.wait_for(id, default_timeout(), |ev| {
            targets
                .iter()
                .all(|t| matches!(crate::json::status_of(ev, t), Some("delivered") | Some("dead")))
        })
        .await
    }

    /// Wait (default timeout) until the event is `delivered` to every target listed.
    pub async fn wait_delivered(&self, id: &str, targets: &[&str]) -> Value {
        self.wait_for(id, default_timeout(), |ev| {
            targets
                .iter()
                .all(|t| crate::json::status_of(ev, t) == Some("delivered"))
        })
        .await
    }

    /// Poll `GET /v1/targets` until `pred` holds; returns that document.
    pub async fn wait_for_targets(&self, timeout: Duration, pred: impl FnMut(&Value) -> bool) -> Value {
        self.wait_for_document("/v1/targets", timeout, Duration::from_millis(100), pred)
            .await
    }

    /// Poll `GET /v1/replays/{id}` until the bulk replay job is no longer `running`; returns
    /// the job.
    pub async fn wait_for_replay(&self, id: i64, timeout: Duration) -> Value {
        self.wait_for_document(
            &format!("/v1/replays/{id}"),
            timeout,
            Duration::from_millis(50),
            |job| job["status"] != "running",
        )
        .await
    }

    /// `POST /v1/deliveries/replay` with a filter: asserts that it started a bulk replay job
    /// (`202`, `Location: /v1/replays/{id}`), then waits for the job to finish; returns it.
    pub async fn replay_job(&self, filter: &Value) -> Value {
        let req = self
            .request(reqwest::Method::POST, "/v1/deliveries/replay")
            .json(filter);
        let resp = req.send().await.expect("POST /v1/deliveries/replay");
        let status = resp.status().as_u16();
        let location = resp
            .headers()
            .get("location")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let job: Value = resp.json().await.expect("a JSON answer");
        assert_eq!(status, 202, "a filter starts a replay job: {job}");
        let id = job["id"].as_i64().unwrap_or_else(|| panic!("a job id: {job}"));
        assert_eq!(location, Some(format!("/v1/replays/{id}")), "{job}");
        self.wait_for_replay(id, default_timeout() * 2).await
    }

    /// Poll `GET /v1/sources` until `pred` holds; returns that document.
    pub async fn wait_for_sources(&self, timeout: Duration, pred: impl FnMut(&Value) -> bool) -> Value {
        self.wait_for_document("/v1/sources", timeout, Duration::from_millis(50), pred)
            .await
    }

    /// Poll `GET <path>` (asserting 200) every `every` until `pred` holds; returns that
    /// document.
    ///
    /// # Panics
    /// On timeout, with the last document and the child's stderr.
    async fn wait_for_document(
        &self,
        path: &str,
        timeout: Duration,
        every: Duration,
        mut pred: impl FnMut(&Value) -> bool,
    ) -> Value {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let (status, body) = self.get_json(path).await;
            assert_eq!(status, 200, "GET {path} answered {status}: {body}");
            if pred(&body) {
                return body;
            }
            if tokio::time::Instant::now() >= deadline {
                panic!(
                    "GET {path}: condition not met within {timeout:?}; last:\n{}\n--- outboxd stderr (tail) ---\n{}",
                    serde_json::to_string_pretty(&body).unwrap_or_default(),
                    self.stderr_tail(60)
                );
            }
            tokio::time::sleep(every).await;
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
    fn authority_from_url() {
        assert_eq!(
            authority_of("http://127.0.0.1:9000/crm").as_deref(),
            Some("127.0.0.1:9000")
        );
        assert_eq!(
            authority_of("https://example.com/x").as_deref(),
            Some("example.com:443")
        );
    }

    #[test]
    fn manifest_serialises_tables_last() {
        let t = Target::webhook("http://127.0.0.1:9/a")
            .events(&["order.*"])
            .fast_retry(5)
            .secret("whsec_AAAA");
        let text = t.to_toml();
        let parsed: toml::Table = text.parse().expect("valid TOML");
        assert_eq!(parsed["plugin"].as_str(), Some("webhook.wasm"));
        assert_eq!(parsed["retry"]["initial_backoff_ms"].as_integer(), Some(50));
        assert_eq!(parsed["config"]["url"].as_str(), Some("http://127.0.0.1:9/a"));
        assert_eq!(parsed["allowed_hosts"][0].as_str(), Some("127.0.0.1:9"));
        assert!(parsed.get("timeout_ms").is_none());
    }

    #[test]
    fn breaker_keys_are_set_one_by_one_or_together() {
        let t = Target::webhook("http://127.0.0.1:9/b")
            .breaker_failures(7)
            .breaker_retry_after("delivery");
        let parsed: toml::Table = t.to_toml().parse().expect("valid TOML");
        assert_eq!(parsed["breaker"]["failures"].as_integer(), Some(7));
        assert_eq!(parsed["breaker"]["retry_after"].as_str(), Some("delivery"));
        assert!(parsed["breaker"].get("cooldown_ms").is_none());
        let t = t.breaker_cooldown_ms(500).breaker(3, 1000);
        let parsed: toml::Table = t.to_toml().parse().expect("valid TOML");
        assert_eq!(parsed["breaker"]["failures"].as_integer(), Some(3));
        assert_eq!(parsed["breaker"]["cooldown_ms"].as_integer(), Some(1000));
        assert_eq!(parsed["breaker"]["retry_after"].as_str(), Some("delivery"));
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

    #[test]
    fn manifest_serialises_failure_class_keys() {
        let t = Target::webhook_batch("http://127.0.0.1:9/b")
            .batch(10, 300)
            .ordered(true)
            .fast_retry(5)
            .breaker(3, 1000);
        let parsed: toml::Table = t.to_toml().parse().expect("valid TOML");
        assert_eq!(parsed["plugin"].as_str(), Some("webhook_batch.wasm"));
        assert_eq!(parsed["class"].as_str(), Some("batched"));
        assert_eq!(parsed["max_batch"].as_integer(), Some(10));
        assert_eq!(parsed["linger_ms"].as_integer(), Some(300));
        assert_eq!(parsed["ordered"].as_bool(), Some(true));
        assert_eq!(parsed["breaker"]["failures"].as_integer(), Some(3));
        assert_eq!(parsed["breaker"]["cooldown_ms"].as_integer(), Some(1000));
        assert_eq!(parsed["retry"]["max_attempts"].as_integer(), Some(5));
        assert!(parsed.get("rate_per_sec").is_none());
    }
}
