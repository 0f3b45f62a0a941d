//! The database's own cost of a phase of the PostgreSQL runs, per unit of work (a delivery of
//! the drain, an event of ingest): the statements outboxd sent (`outboxd_store_statements_total`
//! of every host's `GET /metrics`), the write transactions (transaction ids the server assigned,
//! `pg_snapshot_xmax(pg_current_snapshot())`), the WAL written (`pg_current_wal_lsn()`), and the
//! server's CPU time: every PostgreSQL process serving the run's database (its backends and
//! autovacuum workers, found by the database name in their process title) and the server's
//! shared background processes (WAL writer, checkpointer, background writer, autovacuum
//! launcher), read from `/proc/<pid>/stat` every 50 ms so that a process that ends during the
//! phase still counts. WAL, transaction ids and the background processes are server-wide:
//! whatever else runs on the server is counted too. From the CPU time per unit follows what
//! one server core could carry, and a projection for `K` cores (linear: an upper bound that
//! ignores contention, for the case the 2-core machine cannot show, hosts and server on
//! machines of their own).

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::pg::Server;

/// Clock ticks per second (`/proc/<pid>/stat`), as in `service.rs`.
const TICKS: f64 = 100.0;

/// The shared background processes counted with the run's own.
const BACKGROUND: [&str; 4] = ["walwriter", "checkpointer", "background writer", "autovacuum launcher"];

/// Counters at one moment.
#[derive(Debug, Clone, Copy)]
struct Snapshot {
    statements: u64,
    xids: u64,
    wal: u64,
}

/// A phase being measured.
pub struct Probe {
    server: Server,
    bases: Vec<String>,
    client: reqwest::Client,
    start: Snapshot,
    started: Instant,
    stop: Arc<AtomicBool>,
    sampler: JoinHandle<u64>,
}

/// What a phase cost the database, per unit.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Cost {
    pub units: u64,
    pub unit: &'static str,
    pub statements: f64,
    pub transactions: f64,
    pub wal_bytes: f64,
    pub server_cpu_us: f64,
    /// Server CPU over the phase, in percent of one core.
    pub server_cpu_percent: f64,
    /// What one server core could carry at this cost, units per second.
    pub per_core: f64,
}

impl Cost {
    /// The note of a table row: the figures per unit and the projection for `cores`.
    pub fn note(&self, cores: u32) -> String {
        format!(
            "per {}: {:.2} statements, {:.3} write transactions, {:.0} B WAL, {:.1} µs server CPU \
             (server at {:.0} % of a core); one server core ≈ {:.0} {}/s, {cores} cores ≈ {:.0}/s",
            self.unit,
            self.statements,
            self.transactions,
            self.wal_bytes,
            self.server_cpu_us,
            self.server_cpu_percent,
            self.per_core,
            if self.unit == "delivery" {
                "deliveries"
            } else {
                "events"
            },
            self.per_core * f64::from(cores),
        )
    }

    pub fn json(&self, cores: u32) -> Value {
        let mut v = json!(self);
        v["projected_cores"] = json!(cores);
        v["projected_per_second"] = json!(self.per_core * f64::from(cores));
        v
    }
}

impl Probe {
    /// Starts measuring: the counters now, and the CPU sampler.
    pub async fn start(server: &Server, database: &str, bases: &[String]) -> Result<Self, String> {
        let client = reqwest::Client::builder()
            .no_proxy()
            .build()
            .map_err(|e| e.to_string())?;
        let stop = Arc::new(AtomicBool::new(false));
        let sampler = {
            let (stop, database) = (Arc::clone(&stop), database.to_owned());
            std::thread::spawn(move || sample_cpu(&database, &stop))
        };
        let mut probe = Self {
            server: server.clone(),
            bases: bases.to_vec(),
            client,
            start: Snapshot {
                statements: 0,
                xids: 0,
                wal: 0,
            },
            started: Instant::now(),
            stop,
            sampler,
        };
        probe.start = probe.snapshot().await?;
        probe.started = Instant::now();
        Ok(probe)
    }

    /// Ends the phase, which did `units` of work.
    pub async fn finish(self, units: u64, unit: &'static str) -> Result<Cost, String> {
        let end = self.snapshot().await?;
        let wall = self.started.elapsed();
        self.stop.store(true, Ordering::SeqCst);
        let ticks = self.sampler.join().map_err(|_| "the CPU sampler panicked")?;
        let per = |n: u64| n as f64 / units.max(1) as f64;
        let cpu_s = ticks as f64 / TICKS;
        let cpu_us = cpu_s * 1e6 / units.max(1) as f64;
        Ok(Cost {
            units,
            unit,
            statements: per(end.statements.saturating_sub(self.start.statements)),
            transactions: per(end.xids.saturating_sub(self.start.xids)),
            wal_bytes: per(end.wal.saturating_sub(self.start.wal)),
            server_cpu_us: cpu_us,
            server_cpu_percent: cpu_s / wall.as_secs_f64().max(1e-9) * 100.0,
            per_core: if cpu_us > 0.0 { 1e6 / cpu_us } else { 0.0 },
        })
    }

    async fn snapshot(&self) -> Result<Snapshot, String> {
        let mut statements = 0;
        for base in &self.bases {
            statements += self.statements_of(base).await?;
        }
        // On the `postgres` database: the figures are the server's, and this session's work is
        // not counted as the run's.
        let row = self.server.query(
            "postgres",
            "SELECT pg_snapshot_xmax(pg_current_snapshot())::text::bigint, \
             pg_wal_lsn_diff(pg_current_wal_lsn(), '0/0')::bigint",
        )?;
        let (xids, wal) = row
            .split_once('|')
            .and_then(|(x, w)| Some((x.parse().ok()?, w.parse().ok()?)))
            .ok_or_else(|| format!("unexpected answer from the server: {row:?}"))?;
        Ok(Snapshot { statements, xids, wal })
    }

    /// `outboxd_store_statements_total` of the host at `base` (0 for a binary without it).
    async fn statements_of(&self, base: &str) -> Result<u64, String> {
        let text = self
            .client
            .get(format!("{base}/metrics"))
            .timeout(Duration::from_secs(10))
            .send()
            .await
            .and_then(|r| r.error_for_status())
            .map_err(|e| format!("GET {base}/metrics: {e}"))?
            .text()
            .await
            .map_err(|e| format!("GET {base}/metrics: {e}"))?;
        Ok(text
            .lines()
            .find_map(|l| l.strip_prefix("outboxd_store_statements_total "))
            .and_then(|v| v.trim().parse::<f64>().ok())
            .map_or(0, |v| v as u64))
    }
}

/// Samples the CPU time of the server's processes that serve `database` (and the shared
/// background ones) until `stop`; returns the clock ticks they used meanwhile.
fn sample_cpu(database: &str, stop: &AtomicBool) -> u64 {
    // Per process: its ticks when first seen (0 when it started during the phase) and now.
    let mut seen: HashMap<u32, (u64, u64)> = HashMap::new();
    let mut first_round = true;
    loop {
        let done = stop.load(Ordering::SeqCst);
        for (pid, ticks) in server_processes(database) {
            let base = if first_round { ticks } else { 0 };
            seen.entry(pid).or_insert((base, ticks)).1 = ticks;
        }
        first_round = false;
        if done {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    seen.values().map(|(first, last)| last.saturating_sub(*first)).sum()
}

/// The server's processes serving `database`, and its shared background processes, with the
/// CPU ticks (user + system) each has used.
fn server_processes(database: &str) -> Vec<(u32, u64)> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for entry in dir.flatten() {
        let Some(pid) = entry.file_name().to_str().and_then(|n| n.parse::<u32>().ok()) else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        if !stat.contains("(postgres)") {
            continue;
        }
        let title = std::fs::read_to_string(format!("/proc/{pid}/cmdline")).unwrap_or_default();
        let ours = title.contains(database) || BACKGROUND.iter().any(|b| title.contains(&format!(": {b}")));
        if !ours {
            continue;
        }
        let fields: Vec<&str> = stat
            .rsplit_once(')')
            .map(|(_, rest)| rest.split_whitespace().collect())
            .unwrap_or_default();
        let get = |i: usize| fields.get(i).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
        out.push((pid, get(11) + get(12)));
    }
    out
}
