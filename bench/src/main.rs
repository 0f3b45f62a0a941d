//! `outboxd-bench`: outboxd's throughput benchmark, in one run on one machine (run it through
//! `cargo xtask bench`, which builds everything in release first). It starts its own HTTP
//! sink on loopback and the real `outboxd serve`, and measures, in this order:
//!
//! 0. the size of the `outboxd` binary given (no run: a `stat`);
//! 1. RSS of the idle service;
//! 2. single-event ingest (`POST /v1/events`, one event per request, 16 connections):
//!    events/s, p50 and p99, with the targets paused so that only ingest runs;
//! 3. batched ingest (arrays of 1000), topping the backlog up to `--events`;
//! 4. RSS with all those deliveries pending (3 per event);
//! 5. the drain: the three webhook targets (concurrency 16 each, one signing) resumed, until
//!    the sink has every delivery: deliveries/s, and outboxd's CPU; in three rounds (the
//!    second and third each of a backlog as large, ingested in arrays), of which the fastest
//!    counts, as for the ceiling, with the median round's ratio beside it; taking turns with
//!    those ([`ROUND_MODES`]), three rounds of targets alike but for `concurrency_mode =
//!    "fixed"` and three of *routed* ones (a payload filter, events with priorities), each
//!    compared with the default by mean, best and median round; then routing's cost in short
//!    paired rounds ([`run::Paired`]);
//! 6. RSS after the drain;
//! 7. end to end: 16 producers posting single events while the targets deliver them;
//! 8. the raw ceiling: the same HTTP client stack (`outboxd::plugin::http_client`) posting
//!    the webhook body and headers to the same sink at the same total concurrency (48), in
//!    three rounds of which the fastest counts;
//! 9. with `--postgres URL`, phases 2, 3 and 5 again on PostgreSQL: on a fresh database of that
//!    server (`outboxd_bench_<random>`, dropped afterwards), first one `outboxd serve`, then
//!    two sharing the database (the producers' connections spread over the hosts, the pause
//!    taken through one host and checked on every one): ingest, drain, each host's CPU, and the
//!    drain's ratio to the ceiling of step 8;
//! 10. delivery against receivers that push back (issue 21, [`adaptive`]): receivers that admit
//!     N requests at once (N = 2, 4, 8; adaptive and fixed targets side by side), whose capacity
//!     halves and comes back, whose latency grows with load, and a token bucket; each with an
//!     `outboxd serve` of its own;
//! 11. per-delivery WebAssembly overhead: the no-op plugin, the webhook plugin (signing; its
//!     time includes the request to the sink), and the JavaScript and Python adapters when
//!     built, through outboxd's plugin runtime in this process, with warm instances (as
//!     `serve` runs a target by default) and with a fresh instance each time.
//!
//! It prints a table and writes every figure as JSON (`--json`). It asserts no speed: a
//! benchmark reports, it does not judge (CI runs `--quick` only to prove that it works).
//!
//! Other benchmarks can be attached with `--extra NAME=PROGRAM`: the program is run with
//! `--outboxd BIN --plugins DIR` (and `--quick` in quick mode), must print one JSON object on
//! stdout, and that object is included in the report under `extra.NAME`; its `rows` array,
//! if any (`{"figure", "value", "unit"}` objects), is added to the table. This is the hook for
//! the relay benchmark (`tests/src/bin/relay-bench.rs`).

mod adaptive;
mod dbcost;
mod load;
mod pg;
mod run;
mod service;
mod sink;
mod wasm;

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use clap::Parser;
use serde_json::{Value, json};

use crate::dbcost::{Cost, Probe};
use crate::load::Throughput;
use crate::pg::PgDatabase;
use crate::run::{Drained, Run, drain_figure, wait_settled};
use crate::service::{CONCURRENCY, Mode, ORDER, SQLITE, Service, TARGETS, drain_targets};
use crate::sink::Sink;

#[derive(Debug, Parser)]
#[command(
    name = "outboxd-bench",
    about = "outboxd's throughput benchmark (see docs/performance.md)"
)]
struct Args {
    /// The `outboxd` binary to run.
    #[arg(long)]
    outboxd: PathBuf,
    /// Directory of the Rust plugins (`webhook.wasm`, `noop.wasm`).
    #[arg(long)]
    plugins: PathBuf,
    /// Directory of the JavaScript/Python adapters (`crm-js.wasm`, `analytics-py.wasm`).
    #[arg(long)]
    polyglot: Option<PathBuf>,
    /// Events in the drain backlog (3 deliveries each); at least 100,000 deliveries by default.
    #[arg(long)]
    events: Option<u64>,
    /// Single-event ingest requests.
    #[arg(long)]
    single: Option<u64>,
    /// Events of the end-to-end run.
    #[arg(long)]
    e2e: Option<u64>,
    /// Requests of the raw-ceiling run.
    #[arg(long)]
    ceiling: Option<u64>,
    /// Deliveries per plugin for the per-delivery overhead.
    #[arg(long)]
    repeat: Option<u32>,
    /// Tiny sizes: proves that every part works in a few seconds; the figures mean little.
    #[arg(long)]
    quick: bool,
    /// Only the per-delivery overhead of the plugins (no service, no drain, no PostgreSQL).
    #[arg(long)]
    overhead_only: bool,
    /// Only the scenarios against receivers that push back (phase 10).
    #[arg(long, conflicts_with = "overhead_only")]
    adaptive_only: bool,
    /// Only the PostgreSQL phases (9), without the SQLite ones, the receivers that push back
    /// and the plugin overhead (needs `--postgres`): for working on the PostgreSQL store; the
    /// drains' ratio to the ceiling is then not measured.
    #[arg(long, requires = "postgres", conflicts_with_all = ["overhead_only", "adaptive_only"])]
    postgres_only: bool,
    /// Without the scenarios against receivers that push back (phase 10).
    #[arg(long, conflicts_with = "adaptive_only")]
    no_adaptive: bool,
    /// A PostgreSQL server, `postgres://user@host:port` without a database, whose user may
    /// create databases: the ingest and drain phases again on PostgreSQL, with one host and
    /// with two sharing a database.
    #[arg(long, value_name = "URL")]
    postgres: Option<String>,
    /// The server size of the projection line of the PostgreSQL phases: what a server of this
    /// many cores could carry at the measured CPU time per delivery or event.
    #[arg(long, default_value_t = 16, value_name = "K")]
    project_cores: u32,
    /// Wake-up latency probes per store (events posted one at a time to idle hosts).
    #[arg(long)]
    wake_probes: Option<u64>,
    /// Where to write the JSON report.
    #[arg(long)]
    json: Option<PathBuf>,
    /// Another benchmark to run and include, as `NAME=PROGRAM` (repeatable).
    #[arg(long = "extra", value_name = "NAME=PROGRAM")]
    extra: Vec<String>,
}

/// Connections of the single-event ingest and end-to-end producers.
const PRODUCERS: usize = 16;
/// Events per request of the batched ingest.
const BATCH: u64 = 1000;
/// Rounds of the raw-ceiling run (the best one counts).
const CEILING_ROUNDS: usize = 3;
/// Rounds of the SQLite drain, each of the whole backlog: the best one counts, as for the
/// ceiling, so that the ratio sets a best round against a best round (on this kind of VM one
/// drain of the same build may differ from the next by a fifth). The table and the JSON also
/// give the median round's ratio.
const DRAIN_ROUNDS: usize = 3;

/// The modes of the drain rounds after the first (a default one), in order. Every run's
/// database grows by a backlog each round, and the later rounds of a run drain slower (a
/// quarter between the first and the ninth on the recorded VM), so a mode always drained
/// third of three would look slower than it is. In this order each mode drains once in each
/// group of three, and the rounds of each mode sit at the same mean position (default 0, 4,
/// 8; fixed 1, 5, 6; routed 2, 3, 7): the mean of a mode's rounds is compared with the mean
/// of another's, free of that drift (`mean_round` in the JSON).
const ROUND_MODES: [Mode; 8] = [
    Mode::Fixed,
    Mode::Routed,
    Mode::Routed,
    Mode::Default,
    Mode::Fixed,
    Mode::Fixed,
    Mode::Routed,
    Mode::Default,
];

struct Sizes {
    events: u64,
    single: u64,
    e2e: u64,
    ceiling: u64,
    repeat: u32,
    wake: u64,
}

impl Sizes {
    fn of(a: &Args) -> Self {
        let d = if a.quick {
            Sizes {
                events: 600,
                single: 300,
                e2e: 300,
                ceiling: 3_000,
                repeat: 200,
                wake: 20,
            }
        } else {
            Sizes {
                events: 34_000,
                single: 10_000,
                e2e: 10_000,
                ceiling: 200_000,
                repeat: 2_000,
                wake: 200,
            }
        };
        let events = a.events.unwrap_or(d.events).max(1);
        Sizes {
            events,
            single: a.single.unwrap_or(d.single).min(events),
            e2e: a.e2e.unwrap_or(d.e2e),
            ceiling: a.ceiling.unwrap_or(d.ceiling),
            repeat: a.repeat.unwrap_or(d.repeat).max(1),
            wake: a.wake_probes.unwrap_or(d.wake),
        }
    }
}

/// One row of the printed table.
struct Row {
    figure: String,
    value: String,
    note: String,
}

fn row(figure: impl Into<String>, value: impl Into<String>, note: impl Into<String>) -> Row {
    Row {
        figure: figure.into(),
        value: value.into(),
        note: note.into(),
    }
}

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .unwrap_or_default()
        .split_whitespace()
        .take(3)
        .collect::<Vec<_>>()
        .join(" ")
}

fn machine() -> Value {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find_map(|l| l.strip_prefix("model name"))
        .and_then(|l| l.split_once(':'))
        .map(|(_, m)| m.trim().to_owned())
        .unwrap_or_default();
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let mem_kib: u64 = std::fs::read_to_string("/proc/meminfo")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0);
    json!({
        "cpu": model,
        "cores": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1),
        "memory_mib": mem_kib / 1024,
        "kernel": kernel.trim(),
    })
}

fn mib(kib: u64) -> String {
    format!("{:.1} MiB", kib as f64 / 1024.0)
}

fn gib(kib: u64) -> String {
    format!("{:.1} GiB", kib as f64 / (1024.0 * 1024.0))
}

fn main() -> ExitCode {
    let args = Args::parse();
    let rt = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("bench: cannot start tokio: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(run(args)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("bench: error: {e}");
            ExitCode::FAILURE
        }
    }
}

fn say(what: &str) {
    eprintln!("bench: {what} (load {})", loadavg());
}

async fn run(args: Args) -> Result<(), String> {
    let sizes = Sizes::of(&args);
    let mut rows = Vec::new();
    let mut report = serde_json::Map::new();
    report.insert("machine".into(), machine());
    report.insert("quick".into(), json!(args.quick));
    report.insert("load_at_start".into(), json!(loadavg()));
    // The size of the binary measured: what an operator installs (issue 26: under 60 MB).
    let binary_bytes = std::fs::metadata(&args.outboxd)
        .map_err(|e| format!("{}: {e}", args.outboxd.display()))?
        .len();
    report.insert("binary_bytes".into(), json!(binary_bytes));
    rows.push(row(
        "outboxd binary",
        format!("{:.1} MB", binary_bytes as f64 / 1e6),
        args.outboxd.display().to_string(),
    ));

    let postgres = match &args.postgres {
        Some(url) if !args.overhead_only && !args.adaptive_only => {
            let server = pg::Server::parse(url)?;
            server.check()?;
            Some(server)
        }
        _ => None,
    };

    let sink = Sink::start().await.map_err(|e| format!("sink: {e}"))?;
    let mut duplicates = 0;
    if args.adaptive_only {
        if args.postgres.is_some() {
            say("--adaptive-only: no PostgreSQL phases");
        }
        adaptive_phase(&args, &mut rows, &mut report).await?;
    } else if args.postgres_only {
        if let Some(server) = &postgres {
            duplicates += postgres_phases(&args, &sizes, &sink, server, None, &mut rows, &mut report).await?;
        }
    } else if !args.overhead_only {
        let yardsticks;
        (duplicates, yardsticks) = service_phases(&args, &sizes, &sink, &mut rows, &mut report).await?;
        if let Some(server) = &postgres {
            duplicates +=
                postgres_phases(&args, &sizes, &sink, server, Some(yardsticks), &mut rows, &mut report).await?;
        }
        if !args.no_adaptive {
            adaptive_phase(&args, &mut rows, &mut report).await?;
        }
    } else if args.postgres.is_some() {
        say("--overhead-only: no PostgreSQL phases");
    }
    if !args.adaptive_only && !args.postgres_only {
        overhead_phase(&args, &sizes, &sink, &mut rows, &mut report).await?;
        extra_phase(&args, &mut rows, &mut report)?;
    }
    report.insert("load_at_end".into(), json!(loadavg()));

    print_table(&rows, &sizes, duplicates);
    if let Some(path) = &args.json {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        }
        let text = serde_json::to_string_pretty(&Value::Object(report)).expect("serializable");
        std::fs::write(path, text + "\n").map_err(|e| format!("write {}: {e}", path.display()))?;
        eprintln!("bench: wrote {}", path.display());
    }
    Ok(())
}

type Report = serde_json::Map<String, Value>;

/// Phases 1 to 8: everything that runs against `outboxd serve` on SQLite. Returns how many
/// deliveries reached the sink more than once, and the yardsticks of the PostgreSQL phases.
async fn service_phases(
    args: &Args,
    sizes: &Sizes,
    sink: &Sink,
    rows: &mut Vec<Row>,
    report: &mut Report,
) -> Result<(u64, Yardsticks), String> {
    say("starting outboxd serve");
    // The drain targets of both modes: the default ones (adaptive) take the ingest phases'
    // events, the fixed ones only their drain rounds'.
    let mut targets = drain_targets(sink, Mode::Default);
    targets.extend(drain_targets(sink, Mode::Fixed));
    targets.extend(drain_targets(sink, Mode::Routed));
    let svc = Service::start(&args.outboxd, &args.plugins, SQLITE, 1, &targets).await?;
    let host = &svc.hosts()[0];
    let run = Run::new(&svc, sink, String::new())?;
    let default_names = Mode::Default.names();

    // 1. Idle.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let idle = host.memory();
    rows.push(row("RSS idle", mib(idle.rss_kib), format!("VSZ {}", gib(idle.vsz_kib))));
    report.insert("rss_idle".into(), json!(idle));

    // 2. Single-event ingest, targets paused; 3. batched ingest up to the backlog size.
    let paused = run.pause(svc.names()).await?;
    report.insert("ingest_single".into(), run.ingest_single(sizes.single, rows).await);
    if let Some(batched) = run
        .ingest_batched(sizes.events - sizes.single, sizes.single, rows)
        .await
    {
        report.insert("ingest_batched".into(), batched);
    }

    // 4. The backlog.
    let deliveries = sizes.events * TARGETS.len() as u64;
    let pending = svc.count("pending").await?;
    let with_pending = host.memory();
    rows.push(row(
        format!("RSS with {pending} deliveries pending"),
        mib(with_pending.rss_kib),
        format!("VSZ {}", gib(with_pending.vsz_kib)),
    ));
    report.insert(
        "rss_pending".into(),
        json!({"pending": pending, "memory": with_pending}),
    );

    // 5. The drain (its first round).
    let drained = run.drain(paused, &default_names, deliveries).await?;

    // 6. After the drain (let the settler catch up first).
    wait_settled(&svc, deliveries).await?;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let after = host.memory();
    rows.push(row(
        "RSS after the drain",
        mib(after.rss_kib),
        format!("VSZ {}", gib(after.vsz_kib)),
    ));
    report.insert("rss_after_drain".into(), json!(after));

    // 5, again: the drain's further rounds, each of a backlog as large, ingested in arrays:
    // rounds of every mode on the same machine within minutes, in the order of
    // [`ROUND_MODES`] (the default ones drained the first round).
    let modes = [Mode::Fixed, Mode::Routed, Mode::Default];
    let mut drains = vec![drained];
    let (mut fixed, mut routed) = (Vec::new(), Vec::new());
    let mut refills: Vec<(Mode, load::Throughput)> = Vec::new();
    for round in 1..(modes.len() * DRAIN_ROUNDS) as u64 {
        let mode = ROUND_MODES[round as usize - 1];
        let names = mode.names();
        let paused = run.pause(&names).await?;
        refills.push((
            mode,
            run.refill(mode.event_type(), sizes.events, sizes.events * round)
                .await?,
        ));
        let drained = run.drain(paused, &names, deliveries).await?;
        match mode {
            Mode::Fixed => fixed.push(drained),
            Mode::Routed => routed.push(drained),
            Mode::Default => drains.push(drained),
        }
        wait_settled(&svc, deliveries * (round + 1)).await?;
    }
    let mut drained_total = deliveries * (modes.len() * DRAIN_ROUNDS) as u64;
    let mut next_id = sizes.events * (modes.len() * DRAIN_ROUNDS) as u64;

    // 5, paired: routing's cost in short rounds, default and routed in turn.
    let pairs = run.routing_pairs(sizes, &mut next_id, &mut drained_total).await?;

    // 7. End to end.
    say(&format!("end to end: {} events posted one per request", sizes.e2e));
    let load_e2e = loadavg();
    let before_e2e = sink.requests();
    let e2e_deliveries = sizes.e2e * TARGETS.len() as u64;
    let t0 = Instant::now();
    let first_e2e = next_id;
    let (posted, posted_lat) =
        load::ingest(run.api.clone(), &svc.bases(), ORDER, PRODUCERS, sizes.e2e, 1, first_e2e).await;
    let e2e_done = sink
        .wait_for(before_e2e + e2e_deliveries, Duration::from_secs(600))
        .await
        .ok_or("the end-to-end run did not finish in 10 minutes")?;
    let e2e = Throughput::new(e2e_deliveries, e2e_done - t0, 0);
    rows.push(row(
        format!("end to end ({PRODUCERS} producers, single events)"),
        format!("{:.0} deliveries/s", e2e.per_second),
        format!(
            "{:.0} events/s accepted, p99 {:.2} ms per request; all delivered {:.0} ms after the last was accepted",
            posted.per_second,
            posted_lat.p99_ms,
            (e2e.seconds - posted.seconds).max(0.0) * 1000.0
        ),
    ));
    report.insert(
        "end_to_end".into(),
        json!({"events": sizes.e2e, "deliveries": e2e, "ingest": posted, "ingest_latency": posted_lat, "load": load_e2e}),
    );
    wait_settled(&svc, drained_total + e2e_deliveries).await?;
    let duplicates = sink.requests() - drains[0].sink_before - (drained_total + e2e_deliveries);
    report.insert("wake".into(), run.wake(sizes.wake, first_e2e + sizes.e2e, rows).await);
    svc.stop();

    // 8. The raw ceiling.
    let total_concurrency = CONCURRENCY * TARGETS.len();
    say(&format!(
        "raw ceiling: {} requests at concurrency {total_concurrency}",
        sizes.ceiling
    ));
    let load_ceiling = loadavg();
    let client = outboxd::plugin::http_client().map_err(|e| e.to_string())?;
    let urls: Vec<String> = TARGETS.iter().map(|t| sink.url(&format!("/{t}"))).collect();
    // In rounds, and the best one counts: on this kind of machine one run of the same loop
    // may reach 20,000 or 34,000 requests/s. The fastest round is the yardstick that is
    // hardest to come close to.
    let mut rounds = Vec::with_capacity(CEILING_ROUNDS);
    for _ in 0..CEILING_ROUNDS {
        let total = sizes.ceiling.div_ceil(CEILING_ROUNDS as u64);
        rounds.push(load::ceiling(client.clone(), urls.clone(), total_concurrency, total).await);
    }
    let ceiling = rounds
        .iter()
        .max_by(|a, b| a.per_second.total_cmp(&b.per_second))
        .cloned()
        .expect("at least one round");
    let (best, median, drain_rounds) = Drained::rounds(&drains, ceiling.per_second);
    rows.push(best.row(&drain_figure("", Mode::Default), ceiling.per_second, &drain_rounds));
    let mean = Drained::mean(&drains);
    let (best_fixed, median_fixed, fixed_rounds) = Drained::rounds(&fixed, ceiling.per_second);
    let best_ratio = best.deliveries.per_second / best_fixed.deliveries.per_second.max(1e-9);
    let median_ratio = median / median_fixed.max(1e-9);
    let mean_ratio = mean / Drained::mean(&fixed).max(1e-9);
    rows.push(best_fixed.row(
        &drain_figure("", Mode::Fixed),
        ceiling.per_second,
        &format!(
            "{fixed_rounds}; adaptive (the default) / fixed: {:.1} % mean round against mean, {:.1} % best against best, \
             {:.1} % median against median",
            mean_ratio * 100.0,
            best_ratio * 100.0,
            median_ratio * 100.0
        ),
    ));
    let (best_routed, median_routed, routed_rounds) = Drained::rounds(&routed, ceiling.per_second);
    let routed_ratio = best_routed.deliveries.per_second / best.deliveries.per_second.max(1e-9);
    let routed_median_ratio = median_routed / median.max(1e-9);
    let routed_mean_ratio = Drained::mean(&routed) / mean.max(1e-9);
    let refill_median = |mode: Mode| {
        let mut rates: Vec<f64> = refills
            .iter()
            .filter(|(m, _)| *m == mode)
            .map(|(_, t)| t.per_second)
            .collect();
        rates.sort_by(f64::total_cmp);
        rates.get(rates.len() / 2).copied().unwrap_or(0.0)
    };
    let (refill_default, refill_routed) = (refill_median(Mode::Default), refill_median(Mode::Routed));
    rows.push(best_routed.row(
        &drain_figure("", Mode::Routed),
        ceiling.per_second,
        &format!(
            "{routed_rounds}; routed / default: {:.1} % mean round against mean, {:.1} % best against best, \
             {:.1} % median against median; the refills' arrays ingest, median: routed {refill_routed:.0} events/s, \
             default {refill_default:.0} ({:.1} %)",
            routed_mean_ratio * 100.0,
            routed_ratio * 100.0,
            routed_median_ratio * 100.0,
            refill_routed / refill_default.max(1e-9) * 100.0
        ),
    ));
    let each: Vec<String> = rounds.iter().map(|r| format!("{:.0}", r.per_second)).collect();
    rows.push(row(
        format!("raw ceiling (same client stack, concurrency {total_concurrency})"),
        format!("{:.0} requests/s", ceiling.per_second),
        format!(
            "best of {CEILING_ROUNDS} rounds ({}); {} errors",
            each.join(", "),
            rounds.iter().map(|r| r.errors).sum::<u64>()
        ),
    ));
    let mut drain = best.json(ceiling.per_second, duplicates);
    drain["mode"] = json!("default (adaptive)");
    drain["rounds"] = json!(drains.iter().map(|d| d.deliveries.clone()).collect::<Vec<_>>());
    drain["ratio_median_round"] = json!(median / ceiling.per_second.max(1e-9));
    report.insert("drain".into(), drain);
    let mut drain = best_fixed.json(ceiling.per_second, duplicates);
    drain["mode"] = json!("fixed");
    drain["rounds"] = json!(fixed.iter().map(|d| d.deliveries.clone()).collect::<Vec<_>>());
    drain["ratio_median_round"] = json!(median_fixed / ceiling.per_second.max(1e-9));
    report.insert("drain_fixed".into(), drain);
    let mut drain = best_routed.json(ceiling.per_second, duplicates);
    drain["mode"] = json!("routed (a payload filter on each target, a priority on each event)");
    drain["rounds"] = json!(routed.iter().map(|d| d.deliveries.clone()).collect::<Vec<_>>());
    drain["ratio_median_round"] = json!(median_routed / ceiling.per_second.max(1e-9));
    report.insert("drain_routed".into(), drain);
    let lowest = pairs.ratios.iter().copied().fold(f64::INFINITY, f64::min);
    let highest = pairs.ratios.iter().copied().fold(0.0, f64::max);
    rows.push(row(
        "drain, routed against default in paired rounds".to_owned(),
        format!("{:.1} %", pairs.median_ratio * 100.0),
        format!(
            "median of {} routed rounds each against the mean of the default rounds either side ({:.1} to {:.1} %), \
             {} deliveries a round",
            pairs.ratios.len(),
            lowest * 100.0,
            highest * 100.0,
            pairs.deliveries_per_round
        ),
    ));
    report.insert("drain_routed_paired".into(), json!(pairs));
    report.insert(
        "drain_routed_to_default".into(),
        json!({"best_round": routed_ratio, "median_round": routed_median_ratio, "mean_round": routed_mean_ratio,
               "refill_ingest_median": {"routed": refill_routed, "default": refill_default}}),
    );
    report.insert(
        "drain_adaptive_to_fixed".into(),
        json!({"best_round": best_ratio, "median_round": median_ratio, "mean_round": mean_ratio}),
    );
    report.insert(
        "raw_ceiling".into(),
        json!({"concurrency": total_concurrency, "throughput": ceiling, "rounds": rounds, "load": load_ceiling}),
    );

    Ok((
        duplicates,
        Yardsticks {
            ceiling: ceiling.per_second,
            sqlite_best: best.deliveries.per_second,
            sqlite_median: median,
        },
    ))
}

/// What the PostgreSQL drains are set against, from the SQLite phases of the same run.
#[derive(Debug, Clone, Copy)]
struct Yardsticks {
    /// The raw ceiling, requests/s.
    ceiling: f64,
    /// SQLite's best and median drain round, deliveries/s.
    sqlite_best: f64,
    sqlite_median: f64,
}

/// Rounds of each PostgreSQL drain (the first of the ingest phases' backlog, the others of a
/// backlog as large, ingested in arrays): best and median, as for SQLite's.
const PG_DRAIN_ROUNDS: u64 = 3;

/// The PostgreSQL phases (`--postgres`): the ingest and drain phases again, on a fresh
/// database of the server with one host, then on another with two hosts sharing it. `yardsticks`
/// are the SQLite run's raw ceiling and drain (none with `--postgres-only`). Returns how many
/// deliveries reached the sink more than once.
async fn postgres_phases(
    args: &Args,
    sizes: &Sizes,
    sink: &Sink,
    server: &pg::Server,
    yardsticks: Option<Yardsticks>,
    rows: &mut Vec<Row>,
    report: &mut Report,
) -> Result<u64, String> {
    let mut figures = Report::new();
    figures.insert("server".into(), json!(server.redacted()));
    let mut duplicates = 0;
    for hosts in [1, 2] {
        let (run, dup) = postgres_run(args, sizes, sink, server, hosts, yardsticks, rows).await?;
        figures.insert(format!("hosts_{hosts}"), run);
        duplicates += dup;
    }
    report.insert("postgres".into(), Value::Object(figures));
    Ok(duplicates)
}

/// One PostgreSQL run: `hosts` processes of `outboxd serve` on a database of their own (dropped
/// afterwards, also when the run fails), single-event and batched ingest, the drain in
/// [`PG_DRAIN_ROUNDS`] rounds, the database's cost of each (the drain's of its first round), and
/// the wake-up latency.
async fn postgres_run(
    args: &Args,
    sizes: &Sizes,
    sink: &Sink,
    server: &pg::Server,
    hosts: usize,
    yardsticks: Option<Yardsticks>,
    rows: &mut Vec<Row>,
) -> Result<(Value, u64), String> {
    let db = PgDatabase::create(server)?;
    let prefix = format!("PostgreSQL, {hosts} host{}: ", if hosts == 1 { "" } else { "s" });
    say(&format!("{prefix}starting outboxd serve on database {}", db.name()));
    let targets = drain_targets(sink, Mode::Default);
    let svc = Service::start(&args.outboxd, &args.plugins, &db.url(), hosts, &targets).await?;
    let run = Run::new(&svc, sink, prefix)?;
    let ceiling = yardsticks.map_or(0.0, |y| y.ceiling);

    let paused = run.pause(svc.names()).await?;
    let cores = args.project_cores;
    let mut costs = Report::new();
    let probe = Probe::start(server, db.name(), &svc.bases()).await?;
    let single = run.ingest_single(sizes.single, rows).await;
    let cost = probe.finish(sizes.single, "event").await?;
    rows.push(cost_row(&run.prefix, "single-event ingest", &cost, cores));
    costs.insert("ingest_single".into(), cost.json(cores));
    let batched_events = sizes.events - sizes.single;
    let probe = Probe::start(server, db.name(), &svc.bases()).await?;
    let batched = run.ingest_batched(batched_events, sizes.single, rows).await;
    if batched.is_some() {
        let cost = probe.finish(batched_events, "event").await?;
        rows.push(cost_row(&run.prefix, "ingest of arrays", &cost, cores));
        costs.insert("ingest_batched".into(), cost.json(cores));
    }
    let deliveries = sizes.events * TARGETS.len() as u64;
    let probe = Probe::start(server, db.name(), &svc.bases()).await?;
    let first = run.drain(paused, svc.names(), deliveries).await?;
    wait_settled(&svc, deliveries).await?;
    let cost = probe.finish(deliveries, "delivery").await?;
    let sink_before = first.sink_before;
    let mut drains = vec![first];
    for round in 1..PG_DRAIN_ROUNDS {
        let paused = run.pause(svc.names()).await?;
        run.refill(ORDER, sizes.events, sizes.events * round).await?;
        drains.push(run.drain(paused, svc.names(), deliveries).await?);
        wait_settled(&svc, deliveries * (round + 1)).await?;
    }
    let duplicates = sink.requests() - sink_before - deliveries * PG_DRAIN_ROUNDS;
    let (best, median, mut note) = Drained::rounds(&drains, ceiling);
    if let Some(y) = yardsticks {
        note.push_str(&format!(
            "; {:.1} % of SQLite's best round, median {:.1} % of SQLite's median",
            best.deliveries.per_second / y.sqlite_best.max(1e-9) * 100.0,
            median / y.sqlite_median.max(1e-9) * 100.0
        ));
    }
    rows.push(best.row(&drain_figure(&run.prefix, Mode::Default), ceiling, &note));
    rows.push(cost_row(&run.prefix, "drain", &cost, cores));
    costs.insert("drain".into(), cost.json(cores));
    let mut drain = best.json(ceiling, duplicates);
    drain["rounds"] = json!(drains.iter().map(|d| d.deliveries.clone()).collect::<Vec<_>>());
    drain["median_round"] = json!(median);
    if let Some(y) = yardsticks {
        drain["to_sqlite_best"] = json!(best.deliveries.per_second / y.sqlite_best.max(1e-9));
        drain["to_sqlite_median"] = json!(median / y.sqlite_median.max(1e-9));
    }
    let wake = run.wake(sizes.wake, sizes.events * PG_DRAIN_ROUNDS, rows).await;
    svc.stop();
    Ok((
        json!({
            "hosts": hosts, "ingest_single": single, "ingest_batched": batched,
            "drain": drain, "database_cost": costs, "wake": wake,
        }),
        duplicates,
    ))
}

/// A row of the database's cost of a phase (`dbcost`).
fn cost_row(prefix: &str, phase: &str, cost: &Cost, cores: u32) -> Row {
    row(
        format!("{prefix}database cost of the {phase}"),
        format!("{:.1} µs server CPU/{}", cost.server_cpu_us, cost.unit),
        cost.note(cores),
    )
}

/// Phase 10: delivery against receivers that push back.
async fn adaptive_phase(args: &Args, rows: &mut Vec<Row>, report: &mut Report) -> Result<(), String> {
    let started = Instant::now();
    let figures = adaptive::run(&args.outboxd, &args.plugins, args.quick, rows).await?;
    say(&format!(
        "adaptive scenarios took {:.1} s",
        started.elapsed().as_secs_f64()
    ));
    report.insert("adaptive".into(), figures);
    Ok(())
}

/// Phase 11: per-delivery WebAssembly overhead.
async fn overhead_phase(
    args: &Args,
    sizes: &Sizes,
    sink: &Sink,
    rows: &mut Vec<Row>,
    report: &mut Report,
) -> Result<(), String> {
    say(&format!(
        "per-delivery overhead: {} deliveries per plugin",
        sizes.repeat
    ));
    let mut plugins = vec![
        (args.plugins.join("noop.wasm"), vec![], sizes.repeat),
        // The drain's plugin, signing as its first target does: its time includes the
        // round trip to the sink, which is what the no-op plugin leaves out.
        (
            args.plugins.join("webhook.wasm"),
            vec![("url", sink.url("/hook/")), ("secret", service::SECRET.to_owned())],
            sizes.repeat,
        ),
    ];
    if let Some(dir) = &args.polyglot {
        // The adapters post to the sink; fewer repetitions, they are slower.
        let slow = (sizes.repeat / 4).max(1);
        plugins.push((
            dir.join("crm-js.wasm"),
            vec![("url", sink.url("/crm/")), ("api_key", "sk_bench".to_owned())],
            slow,
        ));
        plugins.push((
            dir.join("analytics-py.wasm"),
            vec![("url", sink.url("/analytics/")), ("write_key", "wk_bench".to_owned())],
            slow,
        ));
    }
    let mut overheads = Vec::new();
    for (path, config, repeat) in plugins {
        if !path.is_file() {
            eprintln!("bench: {} is not built; skipped", path.display());
            continue;
        }
        let config: Vec<(&str, String)> = config;
        let compiled = wasm::compile(&path).await?;
        for fresh in [false, true] {
            let m = wasm::measure(&compiled, &config, &[sink.authority()], repeat, fresh).await?;
            rows.push(row(
                format!("per delivery, {}, {} instance", m.plugin, m.instances),
                format!("{:.1} µs", m.median_us),
                format!(
                    "median of {}; mean {:.1} µs, p99 {:.1} µs; CPU {:.1} µs per delivery; {}",
                    m.deliveries, m.mean_us, m.p99_us, m.cpu_us, m.outcome
                ),
            ));
            overheads.push(m);
        }
    }
    report.insert("per_delivery".into(), json!(overheads));
    Ok(())
}

/// Attached benchmarks (`--extra`).
fn extra_phase(args: &Args, rows: &mut Vec<Row>, report: &mut Report) -> Result<(), String> {
    let mut extra = serde_json::Map::new();
    for spec in &args.extra {
        let (name, program) = spec
            .split_once('=')
            .ok_or_else(|| format!("--extra {spec:?}: expected NAME=PROGRAM"))?;
        say(&format!("extra benchmark {name}: {program}"));
        let mut cmd = std::process::Command::new(program);
        cmd.arg("--outboxd")
            .arg(&args.outboxd)
            .arg("--plugins")
            .arg(&args.plugins);
        if args.quick {
            cmd.arg("--quick");
        }
        let out = cmd.output().map_err(|e| format!("run {program}: {e}"))?;
        if !out.status.success() {
            return Err(format!(
                "{program} failed ({}):\n{}",
                out.status,
                String::from_utf8_lossy(&out.stderr)
            ));
        }
        let value: Value = serde_json::from_slice(&out.stdout).map_err(|e| format!("{program}: not JSON: {e}"))?;
        for r in value["rows"].as_array().into_iter().flatten() {
            rows.push(row(
                format!("{name}: {}", r["figure"].as_str().unwrap_or("?")),
                format!("{} {}", r["value"], r["unit"].as_str().unwrap_or_default()),
                String::new(),
            ));
        }
        extra.insert(name.to_owned(), value);
    }
    if !extra.is_empty() {
        report.insert("extra".into(), Value::Object(extra));
    }
    Ok(())
}

fn print_table(rows: &[Row], sizes: &Sizes, duplicates: u64) {
    let w0 = rows.iter().map(|r| r.figure.chars().count()).max().unwrap_or(0);
    let w1 = rows.iter().map(|r| r.value.chars().count()).max().unwrap_or(0);
    println!(
        "outboxd-bench: {} events drained ({} deliveries), {} single-event requests, {} end-to-end events, load {}",
        sizes.events,
        sizes.events * TARGETS.len() as u64,
        sizes.single,
        sizes.e2e,
        loadavg()
    );
    for r in rows {
        println!("  {:<w0$}  {:>w1$}  {}", r.figure, r.value, r.note);
    }
    if duplicates > 0 {
        println!("  ({duplicates} deliveries reached the sink more than once: retried after a lost outcome)");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_mode_drains_as_often_and_at_the_same_mean_position() {
        // Position 0 is the first drain, a default one.
        let order: Vec<Mode> = std::iter::once(Mode::Default).chain(ROUND_MODES).collect();
        for mode in [Mode::Default, Mode::Fixed, Mode::Routed] {
            let positions: Vec<usize> = (0..order.len()).filter(|&i| order[i] == mode).collect();
            assert_eq!(positions.len(), DRAIN_ROUNDS, "{mode:?}");
            assert_eq!(
                positions.iter().sum::<usize>(),
                4 * DRAIN_ROUNDS,
                "{mode:?}: {positions:?}"
            );
            // Once in each group of three.
            let groups: Vec<usize> = positions.iter().map(|p| p / 3).collect();
            assert_eq!(groups, [0, 1, 2], "{mode:?}");
        }
    }
}
