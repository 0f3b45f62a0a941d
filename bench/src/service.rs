//! The real `outboxd serve` under test: a temporary directory with its configuration, three
//! webhook targets pointing at the sink (one of them signing), the child process, its API,
//! and what `/proc` says about it (resident memory, CPU time).

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::sink::Sink;

/// The targets of the drain and end-to-end runs: the stock webhook plugin, concurrency 16
/// each, signatures on for the first.
pub const TARGETS: [&str; 3] = ["hook-signed", "hook-a", "hook-b"];
/// Each target's concurrency.
pub const CONCURRENCY: usize = 16;
/// A fixed, public benchmark secret (Standard Webhooks format).
const SECRET: &str = "whsec_b3V0Ym94ZC1iZW5jaC1zZWNyZXQtZG8tbm90LXVzZSEh";

/// A running `outboxd serve`.
pub struct Service {
    child: Child,
    dir: tempfile::TempDir,
    pub base: String,
    client: reqwest::Client,
}

/// Why the service could not be driven.
pub type Error = String;

impl Service {
    /// Lays out the directory (config, `webhook.wasm` and three manifests) and starts
    /// `outboxd serve`, waiting for its `listening on` line.
    pub async fn start(outboxd: &Path, plugins: &Path, sink: &Sink) -> Result<Self, Error> {
        let dir = tempfile::Builder::new()
            .prefix("outboxd-bench-")
            .tempdir()
            .map_err(|e| format!("temporary directory: {e}"))?;
        let pd = dir.path().join("plugins.d");
        std::fs::create_dir_all(&pd).map_err(|e| e.to_string())?;
        let webhook = plugins.join("webhook.wasm");
        std::fs::copy(&webhook, pd.join("webhook.wasm")).map_err(|e| format!("copy {}: {e}", webhook.display()))?;
        for (i, name) in TARGETS.iter().enumerate() {
            let mut manifest = format!(
                "plugin = \"webhook.wasm\"\nevents = [\"order.*\"]\nconcurrency = {CONCURRENCY}\n\
                 allowed_hosts = [\"{}\"]\n\n[config]\nurl = \"{}\"\n",
                sink.authority(),
                sink.url(&format!("/{name}"))
            );
            if i == 0 {
                manifest.push_str(&format!("secret = \"{SECRET}\"\n"));
            }
            std::fs::write(pd.join(format!("{name}.toml")), manifest).map_err(|e| e.to_string())?;
        }
        let config = "listen = \"127.0.0.1:0\"\ndatabase = \"outboxd.db\"\nplugins_dir = \"plugins.d\"\n\
                      cache_dir = \"cache\"\nwatch_plugins = false\n";
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
            let log = std::fs::read_to_string(dir.path().join("outboxd.log")).unwrap_or_default();
            return Err(format!("outboxd serve exited before listening:\n{log}"));
        };
        let client = reqwest::Client::builder()
            .no_proxy()
            .timeout(Duration::from_secs(60))
            .build()
            .map_err(|e| e.to_string())?;
        Ok(Self {
            child,
            dir,
            base: format!("http://{addr}"),
            client,
        })
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn log_path(&self) -> PathBuf {
        self.dir.path().join("outboxd.log")
    }

    async fn post(&self, path: &str) -> Result<(), Error> {
        let r = self
            .client
            .post(format!("{}{path}", self.base))
            .send()
            .await
            .map_err(|e| format!("POST {path}: {e}"))?;
        if r.status().is_success() {
            Ok(())
        } else {
            Err(format!("POST {path}: {}", r.status()))
        }
    }

    /// Pauses (`true`) or resumes every benchmark target.
    pub async fn set_paused(&self, paused: bool) -> Result<(), Error> {
        let verb = if paused { "pause" } else { "resume" };
        for t in TARGETS {
            self.post(&format!("/v1/targets/{t}/{verb}")).await?;
        }
        Ok(())
    }

    /// `GET /v1/targets`.
    pub async fn targets(&self) -> Result<Value, Error> {
        self.client
            .get(format!("{}/v1/targets", self.base))
            .send()
            .await
            .map_err(|e| e.to_string())?
            .json()
            .await
            .map_err(|e| e.to_string())
    }

    /// Deliveries of the benchmark targets in `status`, summed.
    pub async fn count(&self, status: &str) -> Result<u64, Error> {
        let targets = self.targets().await?;
        Ok(targets
            .as_array()
            .into_iter()
            .flatten()
            .filter(|t| TARGETS.contains(&t["name"].as_str().unwrap_or_default()))
            .map(|t| t["counts"][status].as_u64().unwrap_or(0))
            .sum())
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

    /// Stops the service (SIGTERM through `kill`, then a hard kill after 15 s).
    pub fn stop(mut self) {
        let _ = Command::new("kill").arg(self.child.id().to_string()).status();
        let deadline = Instant::now() + Duration::from_secs(15);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
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
