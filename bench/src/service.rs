//! The real `outboxd serve` under test: one host or several sharing a PostgreSQL database,
//! each in a temporary directory of its own with the same configuration and the same target
//! manifests (for the drain, three webhook targets pointing at the sink, one of them signing:
//! [`drain_targets`]; for the adaptive scenarios, whatever they need: [`Webhook`]); the child
//! processes, their API, and what `/proc` says about each (resident memory, CPU time).

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::sink::Sink;

/// The targets of the drain and end-to-end runs: the stock webhook plugin, concurrency 16
/// each, signatures on for the first.
pub const TARGETS: [&str; 3] = ["hook-signed", "hook-a", "hook-b"];
/// The event type the drain targets of each mode take ([`drain_targets`]): both the same
/// length, so that the webhook bodies are the same size.
pub const ORDER: &str = "order.created";
pub const FIXED: &str = "fixed.created";
/// The event type of the routed mode: a payload filter on its targets, a priority on its events.
pub const ROUTED: &str = "route.created";
/// The routed targets' payload filter (CEL): every event of [`crate::load::payload`] passes, so
/// that the routed mode delivers as many as the others and differs only by the work of routing.
pub const FILTER: &str = "payload.total > 10.0 && payload.currency == 'EUR'";
/// Each target's concurrency.
pub const CONCURRENCY: usize = 16;
/// A fixed, public benchmark secret (Standard Webhooks format).
pub const SECRET: &str = "whsec_b3V0Ym94ZC1iZW5jaC1zZWNyZXQtZG8tbm90LXVzZSEh";
/// `database` for the SQLite store: a file in the host's directory.
pub const SQLITE: &str = "outboxd.db";

/// Why the service could not be driven.
pub type Error = String;

/// One target of the service: its name and its manifest (`plugins.d/<name>.toml`).
#[derive(Clone, Debug)]
pub struct TargetSpec {
    pub name: String,
    pub manifest: String,
}

/// A manifest of the stock webhook plugin (`webhook.wasm`): `events`, `concurrency`,
/// `allowed_hosts` (the URL's authority), further top-level keys, and `[config]` with `url`
/// and an optional `secret`. Nothing else is written, so the host's defaults apply.
#[derive(Clone, Debug)]
pub struct Webhook {
    name: String,
    url: String,
    authority: String,
    events: Vec<String>,
    concurrency: usize,
    keys: Vec<String>,
    secret: Option<String>,
}

impl Webhook {
    /// Target `name` posting to `url` on `authority` (`127.0.0.1:PORT`), for every event,
    /// concurrency [`CONCURRENCY`].
    pub fn new(name: &str, url: &str, authority: &str) -> Self {
        Self {
            name: name.to_owned(),
            url: url.to_owned(),
            authority: authority.to_owned(),
            events: vec!["*".to_owned()],
            concurrency: CONCURRENCY,
            keys: Vec::new(),
            secret: None,
        }
    }

    /// The event type globs.
    pub fn events(mut self, globs: &[&str]) -> Self {
        self.events = globs.iter().map(|g| (*g).to_owned()).collect();
        self
    }

    /// A top-level key, its value written as TOML (`"fixed"` with the quotes, `16`).
    pub fn key(mut self, key: &str, toml_value: &str) -> Self {
        self.keys.push(format!("{key} = {toml_value}"));
        self
    }

    /// `concurrency_mode = "fixed"`: the limit is `concurrency`, whatever the receiver shows.
    pub fn fixed(self) -> Self {
        self.key("concurrency_mode", "\"fixed\"")
    }

    /// `[config] secret`: Standard Webhooks signatures.
    pub fn secret(mut self, secret: &str) -> Self {
        self.secret = Some(secret.to_owned());
        self
    }

    pub fn spec(self) -> TargetSpec {
        let events: Vec<String> = self.events.iter().map(|e| format!("{e:?}")).collect();
        let mut manifest = format!(
            "plugin = \"webhook.wasm\"\nevents = [{}]\nconcurrency = {}\nallowed_hosts = [\"{}\"]\n",
            events.join(", "),
            self.concurrency,
            self.authority
        );
        for k in &self.keys {
            manifest.push_str(k);
            manifest.push('\n');
        }
        manifest.push_str(&format!("\n[config]\nurl = \"{}\"\n", self.url));
        if let Some(secret) = &self.secret {
            manifest.push_str(&format!("secret = \"{secret}\"\n"));
        }
        TargetSpec {
            name: self.name,
            manifest,
        }
    }
}

/// How the drain targets limit their attempts at once.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// As the manifest's defaults say (no `concurrency_mode`: adaptive).
    Default,
    /// `concurrency_mode = "fixed"`.
    Fixed,
    /// The default limit, with a payload filter ([`FILTER`]) on each target and a priority on
    /// each event ([`crate::load::event`]): what routing costs.
    Routed,
}

impl Mode {
    /// The drain targets' names in this mode.
    pub fn names(self) -> Vec<String> {
        TARGETS
            .iter()
            .map(|t| match self {
                Mode::Default => (*t).to_owned(),
                Mode::Fixed => format!("{t}-fixed"),
                Mode::Routed => format!("{t}-routed"),
            })
            .collect()
    }

    /// The event type the targets of this mode take.
    pub fn event_type(self) -> &'static str {
        match self {
            Mode::Default => ORDER,
            Mode::Fixed => FIXED,
            Mode::Routed => ROUTED,
        }
    }
}

/// The three drain targets of `mode` ([`TARGETS`], `-fixed` or `-routed` after the name),
/// posting to the sink at `/<name>`, the first signing, for events of [`Mode::event_type`].
pub fn drain_targets(sink: &Sink, mode: Mode) -> Vec<TargetSpec> {
    let glob = mode.event_type().replace("created", "*");
    mode.names()
        .iter()
        .enumerate()
        .map(|(i, name)| {
            let mut hook = Webhook::new(name, &sink.url(&format!("/{name}")), &sink.authority()).events(&[&glob]);
            match mode {
                Mode::Default => {}
                Mode::Fixed => hook = hook.fixed(),
                Mode::Routed => hook = hook.key("filter", &format!("{FILTER:?}")),
            }
            if i == 0 {
                hook = hook.secret(SECRET);
            }
            hook.spec()
        })
        .collect()
}

/// One running `outboxd serve`.
pub struct Host {
    child: Child,
    dir: tempfile::TempDir,
    pub base: String,
}

impl Host {
    /// Lays out the directory (config, `webhook.wasm` and the targets' manifests) and starts
    /// `outboxd serve`, waiting for its `listening on` line.
    async fn start(outboxd: &Path, plugins: &Path, database: &str, targets: &[TargetSpec]) -> Result<Self, Error> {
        let dir = tempfile::Builder::new()
            .prefix("outboxd-bench-")
            .tempdir()
            .map_err(|e| format!("temporary directory: {e}"))?;
        let pd = dir.path().join("plugins.d");
        std::fs::create_dir_all(&pd).map_err(|e| e.to_string())?;
        let webhook = plugins.join("webhook.wasm");
        std::fs::copy(&webhook, pd.join("webhook.wasm")).map_err(|e| format!("copy {}: {e}", webhook.display()))?;
        for t in targets {
            std::fs::write(pd.join(format!("{}.toml", t.name)), &t.manifest).map_err(|e| e.to_string())?;
        }
        let config = format!(
            "listen = \"127.0.0.1:0\"\ndatabase = \"{database}\"\nplugins_dir = \"plugins.d\"\n\
             cache_dir = \"cache\"\nwatch_plugins = false\n"
        );
        std::fs::write(dir.path().join("outboxd.toml"), config).map_err(|e| e.to_string())?;
        let log = std::fs::File::create(dir.path().join("outboxd.log")).map_err(|e| e.to_string())?;

        let mut child = Command::new(outboxd)
            .arg("serve")
            .arg("--config")
            .arg(dir.path().join("outboxd.toml"))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(log)
            .spawn()
            .map_err(|e| format!("start {}: {e}", outboxd.display()))?;
        let stdout = child.stdout.take().ok_or("no stdout")?;
        let addr = tokio::task::spawn_blocking(move || {
            let mut lines = BufReader::new(stdout).lines();
            let addr = lines
                .by_ref()
                .map_while(Result::ok)
                .find_map(|l| l.strip_prefix("listening on ").map(str::to_owned));
            // Keep draining, so that the child never blocks on a full pipe.
            std::thread::spawn(move || lines.for_each(drop));
            addr
        })
        .await
        .map_err(|e| e.to_string())?;
        let Some(addr) = addr else {
            let _ = child.kill();
            let _ = child.wait();
            let log = std::fs::read_to_string(dir.path().join("outboxd.log")).unwrap_or_default();
            return Err(format!("outboxd serve exited before listening:\n{log}"));
        };
        Ok(Self {
            child,
            dir,
            base: format!("http://{addr}"),
        })
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn log_path(&self) -> PathBuf {
        self.dir.path().join("outboxd.log")
    }

    /// Resident and virtual size, in KiB, from `/proc/<pid>/status`.
    pub fn memory(&self) -> Memory {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid())).unwrap_or_default();
        let field = |name: &str| {
            status
                .lines()
                .find_map(|l| l.strip_prefix(name))
                .and_then(|v| v.split_whitespace().next())
                .and_then(|v| v.parse().ok())
                .unwrap_or(0)
        };
        Memory {
            rss_kib: field("VmRSS:"),
            vsz_kib: field("VmSize:"),
        }
    }

    /// User and system CPU time the process has used so far.
    pub fn cpu(&self) -> CpuTime {
        CpuTime::of(self.pid())
    }
}

impl Drop for Host {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// The service under test: one host, or several sharing one PostgreSQL database.
pub struct Service {
    hosts: Vec<Host>,
    client: reqwest::Client,
    /// The targets' names.
    names: Vec<String>,
}

impl Service {
    /// Starts `hosts` processes of `outboxd serve`, one after another, each with
    /// `database = "<database>"` in its `outboxd.toml` ([`SQLITE`]: a file in each host's own
    /// directory, so one host only; a `postgres://` URL: one database they all share) and
    /// `targets`, and returns once every one of them listens.
    pub async fn start(
        outboxd: &Path,
        plugins: &Path,
        database: &str,
        hosts: usize,
        targets: &[TargetSpec],
    ) -> Result<Self, Error> {
        if hosts == 0 || (hosts > 1 && !database.starts_with("postgres")) {
            return Err(format!(
                "{hosts} hosts on {database:?}: several hosts need a shared PostgreSQL database"
            ));
        }
        let mut started = Vec::with_capacity(hosts);
        for _ in 0..hosts {
            started.push(Host::start(outboxd, plugins, database, targets).await?);
        }
        let client = reqwest::Client::builder()
            .no_proxy()
            .timeout(Duration::from_secs(60))
            .build()
            .map_err(|e| e.to_string())?;
        Ok(Self {
            hosts: started,
            client,
            names: targets.iter().map(|t| t.name.clone()).collect(),
        })
    }

    pub fn hosts(&self) -> &[Host] {
        &self.hosts
    }

    /// Every host's API base URL.
    pub fn bases(&self) -> Vec<String> {
        self.hosts.iter().map(|h| h.base.clone()).collect()
    }

    /// `POST` to the first host.
    async fn post(&self, path: &str) -> Result<(), Error> {
        let r = self
            .client
            .post(format!("{}{path}", self.hosts[0].base))
            .header("x-outboxd-request", "bench")
            .send()
            .await
            .map_err(|e| format!("POST {path}: {e}"))?;
        if r.status().is_success() {
            Ok(())
        } else {
            Err(format!("POST {path}: {}", r.status()))
        }
    }

    /// Pauses targets `names` through the first host, then checks that every host reports
    /// them paused (the pause is a row of the store, which the hosts of a PostgreSQL cluster
    /// share).
    pub async fn pause(&self, names: &[String]) -> Result<(), Error> {
        for t in names {
            self.post(&format!("/v1/targets/{t}/pause")).await?;
        }
        for (i, host) in self.hosts.iter().enumerate() {
            let targets = self.targets_of(host).await?;
            for t in names {
                let paused = targets
                    .as_array()
                    .into_iter()
                    .flatten()
                    .find(|v| v["name"] == t.as_str())
                    .is_some_and(|v| v["paused"] == true);
                if !paused {
                    return Err(format!(
                        "host {} ({}) does not report target {t} paused after it was paused through host 1",
                        i + 1,
                        host.base
                    ));
                }
            }
        }
        Ok(())
    }

    /// Every target's name.
    pub fn names(&self) -> &[String] {
        &self.names
    }

    /// Resumes targets `names`, through the first host.
    pub async fn resume(&self, names: &[String]) -> Result<(), Error> {
        for t in names {
            self.post(&format!("/v1/targets/{t}/resume")).await?;
        }
        Ok(())
    }

    /// `GET /v1/targets` of `host`.
    async fn targets_of(&self, host: &Host) -> Result<Value, Error> {
        self.client
            .get(format!("{}/v1/targets", host.base))
            .send()
            .await
            .map_err(|e| e.to_string())?
            .json()
            .await
            .map_err(|e| e.to_string())
    }

    /// `GET /v1/targets` of the first host (the counts are the store's, so any host's).
    pub async fn targets(&self) -> Result<Value, Error> {
        self.targets_of(&self.hosts[0]).await
    }

    /// Deliveries of the service's targets in `status`, summed.
    pub async fn count(&self, status: &str) -> Result<u64, Error> {
        let targets = self.targets().await?;
        Ok(targets
            .as_array()
            .into_iter()
            .flatten()
            .filter(|t| self.names.iter().any(|n| t["name"] == n.as_str()))
            .map(|t| t["counts"][status].as_u64().unwrap_or(0))
            .sum())
    }

    /// Where each host logs, for messages.
    pub fn log_paths(&self) -> String {
        self.hosts
            .iter()
            .map(|h| h.log_path().display().to_string())
            .collect::<Vec<_>>()
            .join(", ")
    }

    /// Stops every host (SIGTERM through `kill`, then a hard kill of any still running 15 s
    /// later).
    pub fn stop(mut self) {
        for h in &self.hosts {
            let _ = Command::new("kill").arg(h.pid().to_string()).status();
        }
        let deadline = Instant::now() + Duration::from_secs(15);
        while Instant::now() < deadline {
            self.hosts.retain_mut(|h| !matches!(h.child.try_wait(), Ok(Some(_))));
            if self.hosts.is_empty() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        // Dropping a host that still runs kills it.
    }
}

/// Memory of a process, in KiB.
#[derive(Debug, Clone, Copy, serde::Serialize)]
pub struct Memory {
    pub rss_kib: u64,
    pub vsz_kib: u64,
}

/// CPU time of a process, in clock ticks (`/proc/<pid>/stat` fields 14 and 15).
#[derive(Debug, Clone, Copy)]
pub struct CpuTime {
    user: u64,
    system: u64,
}

/// Clock ticks per second on Linux (`sysconf(_SC_CLK_TCK)` is 100 on every mainstream
/// configuration).
const TICKS: f64 = 100.0;

impl CpuTime {
    pub fn of(pid: u32) -> Self {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        // The command name may contain spaces: fields start after its closing parenthesis.
        let fields: Vec<&str> = stat
            .rsplit_once(')')
            .map(|(_, rest)| rest.split_whitespace().collect())
            .unwrap_or_default();
        let get = |i: usize| fields.get(i).and_then(|v| v.parse().ok()).unwrap_or(0);
        // After the name: state is field 3, so utime (14) and stime (15) are at 11 and 12.
        Self {
            user: get(11),
            system: get(12),
        }
    }

    /// Percent of one core used in user and system mode between `earlier` and `self`.
    pub fn percent_since(&self, earlier: &CpuTime, wall: Duration) -> (f64, f64) {
        let secs = wall.as_secs_f64().max(1e-9);
        let pct = |a: u64, b: u64| (a.saturating_sub(b)) as f64 / TICKS / secs * 100.0;
        (pct(self.user, earlier.user), pct(self.system, earlier.system))
    }
}
