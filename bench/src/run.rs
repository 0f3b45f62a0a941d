//! The phases every store's run shares, against one running `outboxd serve` ([`Run`]): ingest
//! one event per request and in arrays, the refills, the drain and what it measured
//! ([`Drained`]), the wake-up latency, and routing's cost in paired rounds ([`Paired`]).

use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::load::{self, Throughput};
use crate::service::{CONCURRENCY, Mode, ORDER, Service, TARGETS};
use crate::sink::Sink;
use crate::{BATCH, PRODUCERS, Row, Sizes, gib, loadavg, row, say};

/// Routed rounds of the paired comparison ([`Run::routing_pairs`]; 2 with `--quick`).
pub(crate) const ROUTING_PAIRS: usize = 8;

/// The paired rounds of [`Run::routing_pairs`]: every round's rate in order (default, routed,
/// default, …) and each routed round against its neighbours.
#[derive(Debug, Clone, serde::Serialize)]
pub(crate) struct Paired {
    pub(crate) deliveries_per_round: u64,
    pub(crate) rates: Vec<f64>,
    pub(crate) ratios: Vec<f64>,
    pub(crate) median_ratio: f64,
}

impl Paired {
    pub(crate) fn of(rates: Vec<f64>, deliveries_per_round: u64) -> Self {
        let ratios: Vec<f64> = (1..rates.len().saturating_sub(1))
            .step_by(2)
            .map(|i| rates[i] / ((rates[i - 1] + rates[i + 1]) / 2.0).max(1e-9))
            .collect();
        let mut sorted = ratios.clone();
        sorted.sort_by(f64::total_cmp);
        let median_ratio = match sorted.len() {
            0 => 0.0,
            n if n % 2 == 1 => sorted[n / 2],
            n => (sorted[n / 2 - 1] + sorted[n / 2]) / 2.0,
        };
        Self {
            deliveries_per_round,
            rates,
            ratios,
            median_ratio,
        }
    }
}

/// The phases shared by the SQLite and PostgreSQL runs, against one running service.
pub(crate) struct Run<'a> {
    pub(crate) svc: &'a Service,
    pub(crate) sink: &'a Sink,
    pub(crate) api: reqwest::Client,
    /// Put before each figure of the table: empty for SQLite, `PostgreSQL, 2 hosts: `.
    pub(crate) prefix: String,
}

/// The targets are paused: the sink had `sink_requests` requests then, and must have no more
/// when the drain starts.
pub(crate) struct Paused {
    pub(crate) sink_requests: u64,
}

/// What the drain measured.
pub(crate) struct Drained {
    pub(crate) deliveries: Throughput,
    /// Each host's CPU over the drain, in percent of one core: user, system.
    pub(crate) cpu: Vec<(f64, f64)>,
    /// The largest virtual size a host had during the drain.
    pub(crate) peak_vsz_kib: u64,
    pub(crate) load: String,
    /// The sink's count when the drain started.
    pub(crate) sink_before: u64,
}

impl<'a> Run<'a> {
    pub(crate) fn new(svc: &'a Service, sink: &'a Sink, prefix: String) -> Result<Self, String> {
        // Idle connections are dropped well before the service closes them (its header-read
        // timeout, 10 s by default, also ends an idle keep-alive connection): a refill after a
        // long drain must not post on a connection the service is closing at that moment.
        let api = reqwest::Client::builder()
            .no_proxy()
            .pool_idle_timeout(Duration::from_secs(5))
            .build()
            .map_err(|e| e.to_string())?;
        Ok(Self { svc, sink, api, prefix })
    }

    /// `N connections`, and over how many hosts when more than one.
    pub(crate) fn connections(&self, n: usize) -> String {
        match self.svc.hosts().len() {
            1 => format!("{n} connections"),
            hosts => format!("{n} connections over {hosts} hosts"),
        }
    }

    /// Pauses targets `names` (through one host; every host must then report them paused).
    pub(crate) async fn pause(&self, names: &[String]) -> Result<Paused, String> {
        self.svc.pause(names).await?;
        Ok(Paused {
            sink_requests: self.sink.requests(),
        })
    }

    /// Single-event ingest, with the targets paused so that only ingest runs: `count` events,
    /// one per request, on `PRODUCERS` connections spread over the hosts.
    pub(crate) async fn ingest_single(&self, count: u64, rows: &mut Vec<Row>) -> Value {
        let connections = self.connections(PRODUCERS);
        say(&format!(
            "{}single-event ingest: {count} events, {connections}",
            self.prefix
        ));
        let load = loadavg();
        let (single, latency) = load::ingest(self.api.clone(), &self.svc.bases(), ORDER, PRODUCERS, count, 1, 0).await;
        rows.push(row(
            format!("{}ingest, single events ({connections})", self.prefix),
            format!("{:.0} events/s", single.per_second),
            format!(
                "p50 {:.2} ms, p99 {:.2} ms, max {:.1} ms; {} errors",
                latency.p50_ms, latency.p99_ms, latency.max_ms, single.errors
            ),
        ));
        json!({"connections": PRODUCERS, "throughput": single, "latency": latency, "load": load})
    }

    /// Batched ingest topping the backlog up: `count` events numbered from `first`, in arrays
    /// of `BATCH` on 4 connections spread over the hosts. `None` when there is nothing to add.
    pub(crate) async fn ingest_batched(&self, count: u64, first: u64, rows: &mut Vec<Row>) -> Option<Value> {
        if count == 0 {
            return None;
        }
        let connections = self.connections(4);
        say(&format!(
            "{}batched ingest: {count} events in arrays of {BATCH}, {connections}",
            self.prefix
        ));
        let load = loadavg();
        let (batched, latency) = load::ingest(self.api.clone(), &self.svc.bases(), ORDER, 4, count, BATCH, first).await;
        rows.push(row(
            format!("{}ingest, arrays of {BATCH} ({connections})", self.prefix),
            format!("{:.0} events/s", batched.per_second),
            format!("p50 {:.1} ms per request; {} errors", latency.p50_ms, batched.errors),
        ));
        Some(json!({"connections": 4, "per_request": BATCH, "throughput": batched, "latency": latency, "load": load}))
    }

    /// Wake-up latency with idle hosts (`load::wake_latency`): `probes` events posted one at a
    /// time, numbered from `first`.
    pub(crate) async fn wake(&self, probes: u64, first: u64, rows: &mut Vec<Row>) -> Value {
        say(&format!(
            "{}wake-up latency: {probes} events posted one at a time to idle hosts",
            self.prefix
        ));
        let per_event = TARGETS.len() as u64;
        let (latency, lost) = load::wake_latency(
            self.api.clone(),
            &self.svc.bases(),
            self.sink,
            ORDER,
            per_event,
            probes,
            first,
        )
        .await;
        rows.push(row(
            format!("{}wake-up latency, 202 to first attempt (idle hosts)", self.prefix),
            format!("p50 {:.2} ms, p99 {:.2} ms", latency.p50_ms, latency.p99_ms),
            format!(
                "max {:.1} ms; {probes} events one at a time, {lost} not delivered within 10 s",
                latency.max_ms
            ),
        ));
        json!({"probes": probes, "latency": latency, "lost": lost})
    }

    /// Tops the backlog up with `count` events of `event_type` numbered from `first`, in arrays
    /// of `BATCH` on 4 connections, without a row in the table (the drain's further rounds).
    /// Routing's cost on the drain (issue 27) in paired rounds: short drains of a quarter of
    /// the backlog, default and routed in turn, [`ROUTING_PAIRS`] routed ones each between two
    /// default ones; each routed round's rate against the mean of its two neighbours', whose
    /// median is the figure. A round's neighbours ran seconds before and after it, so neither
    /// the database's growth over the run nor the machine's slower minutes weigh on one mode
    /// more than the other. Advances `next_id` (the events' numbers) and `drained` (the
    /// deliveries recorded so far) past what it adds.
    pub(crate) async fn routing_pairs(
        &self,
        sizes: &Sizes,
        next_id: &mut u64,
        drained: &mut u64,
    ) -> Result<Paired, String> {
        let pairs = if sizes.events < 10_000 { 2 } else { ROUTING_PAIRS };
        let events = (sizes.events / 4).max(1);
        let deliveries = events * TARGETS.len() as u64;
        say(&format!(
            "{}routing in paired rounds: {pairs} routed drains of {deliveries} deliveries, each between two default ones",
            self.prefix
        ));
        let mut rates = Vec::with_capacity(2 * pairs + 1);
        for k in 0..(2 * pairs + 1) {
            let mode = if k % 2 == 0 { Mode::Default } else { Mode::Routed };
            let names = mode.names();
            let paused = self.pause(&names).await?;
            self.refill(mode.event_type(), events, *next_id).await?;
            *next_id += events;
            let drained_now = self.drain(paused, &names, deliveries).await?;
            *drained += deliveries;
            wait_settled(self.svc, *drained).await?;
            rates.push(drained_now.deliveries.per_second);
        }
        Ok(Paired::of(rates, deliveries))
    }

    pub(crate) async fn refill(&self, event_type: &str, count: u64, first: u64) -> Result<load::Throughput, String> {
        let (done, _) = load::ingest(self.api.clone(), &self.svc.bases(), event_type, 4, count, BATCH, first).await;
        if done.errors > 0 {
            return Err(format!("{} of the refill's requests failed", done.errors));
        }
        Ok(done)
    }

    /// The drain: resumes targets `names` and measures until the sink has `deliveries` more
    /// requests, with each host's CPU and the peak virtual size.
    pub(crate) async fn drain(&self, paused: Paused, names: &[String], deliveries: u64) -> Result<Drained, String> {
        say(&format!(
            "{}drain: {deliveries} deliveries to {}",
            self.prefix,
            names.join(", ")
        ));
        let before = self.sink.requests();
        if before != paused.sink_requests {
            return Err(format!(
                "the sink got {} requests while the targets were paused",
                before - paused.sink_requests
            ));
        }
        let hosts = self.svc.hosts();
        let load = loadavg();
        let cpu0: Vec<_> = hosts.iter().map(|h| h.cpu()).collect();
        let t0 = Instant::now();
        self.svc.resume(names).await?;
        let mut peak_vsz_kib = 0;
        let done = loop {
            if let Some(at) = self
                .sink
                .wait_for(before + deliveries, Duration::from_millis(100))
                .await
            {
                break Some(at);
            }
            for h in hosts {
                peak_vsz_kib = peak_vsz_kib.max(h.memory().vsz_kib);
            }
            if t0.elapsed() > Duration::from_secs(600) {
                break None;
            }
        };
        let Some(done) = done else {
            return Err(format!(
                "the drain did not finish in 10 minutes: the sink got {} of {deliveries}; targets: {}; logs: {}",
                self.sink.requests() - before,
                self.svc.targets().await.unwrap_or_default(),
                self.svc.log_paths()
            ));
        };
        let took = done - t0;
        let cpu = hosts
            .iter()
            .zip(&cpu0)
            .map(|(h, c0)| h.cpu().percent_since(c0, took))
            .collect();
        Ok(Drained {
            deliveries: Throughput::new(deliveries, took, 0),
            cpu,
            peak_vsz_kib,
            load,
            sink_before: before,
        })
    }
}

/// The figure of a drain row: `{prefix}drain (3 targets x 16, webhook.wasm)`, and the mode when
/// it is not the default.
pub(crate) fn drain_figure(prefix: &str, mode: Mode) -> String {
    let mode = match mode {
        Mode::Default => "",
        Mode::Fixed => ", concurrency_mode = fixed",
        Mode::Routed => ", a payload filter, events with priorities",
    };
    format!(
        "{prefix}drain ({} targets x {CONCURRENCY}{mode}, webhook.wasm)",
        TARGETS.len()
    )
}

impl Drained {
    /// The drain's share of the raw ceiling (`ceiling` requests/s).
    pub(crate) fn ratio(&self, ceiling: f64) -> f64 {
        self.deliveries.per_second / ceiling.max(1e-9)
    }

    /// The best of `rounds` (at least one), the median round's deliveries/s, and the note on
    /// the rounds for the table.
    /// The mean rate of `rounds` (deliveries a second).
    pub(crate) fn mean(rounds: &[Drained]) -> f64 {
        rounds.iter().map(|d| d.deliveries.per_second).sum::<f64>() / rounds.len().max(1) as f64
    }

    pub(crate) fn rounds(rounds: &[Drained], ceiling: f64) -> (&Drained, f64, String) {
        let best = rounds
            .iter()
            .max_by(|a, b| a.deliveries.per_second.total_cmp(&b.deliveries.per_second))
            .expect("at least one round");
        let mut by_speed: Vec<f64> = rounds.iter().map(|d| d.deliveries.per_second).collect();
        by_speed.sort_by(f64::total_cmp);
        let median = by_speed[by_speed.len() / 2];
        let mut note = format!(
            ", best of {} rounds ({})",
            rounds.len(),
            rounds
                .iter()
                .map(|d| format!("{:.0}", d.deliveries.per_second))
                .collect::<Vec<_>>()
                .join(", "),
        );
        if ceiling > 0.0 {
            note.push_str(&format!(", median round {:.1} %", median / ceiling * 100.0));
        }
        (best, median, note)
    }

    /// The row of the table, under `figure`; `rounds` (empty for a single drain) follows the
    /// ratio.
    pub(crate) fn row(&self, figure: &str, ceiling: f64, rounds: &str) -> Row {
        let cpu = |(user, system): &(f64, f64)| format!("{user:.0} % user + {system:.0} % sys");
        let cpu = match self.cpu.as_slice() {
            [one] => format!("outboxd CPU {}", cpu(one)),
            each => format!("CPU per host {}", each.iter().map(cpu).collect::<Vec<_>>().join(", ")),
        };
        row(
            figure,
            format!("{:.0} deliveries/s", self.deliveries.per_second),
            format!(
                "{}{rounds}; {cpu}; peak VSZ {}",
                if ceiling > 0.0 {
                    format!("{:.1} % of the raw ceiling", self.ratio(ceiling) * 100.0)
                } else {
                    "no raw ceiling measured".to_owned()
                },
                gib(self.peak_vsz_kib)
            ),
        )
    }

    /// The figures for the report; the CPU percentages are summed over the hosts.
    pub(crate) fn json(&self, ceiling: f64, duplicates: u64) -> Value {
        let (user, system) = self.cpu.iter().fold((0.0, 0.0), |(u, s), (hu, hs)| (u + hu, s + hs));
        let per_host: Vec<Value> = self
            .cpu
            .iter()
            .map(|(u, s)| json!({"user_percent": u, "system_percent": s}))
            .collect();
        json!({
            // No ceiling measured (`--postgres-only`): no ratio, rather than one against zero.
            "deliveries": self.deliveries, "ratio_to_ceiling": (ceiling > 0.0).then(|| self.ratio(ceiling)),
            "cpu_user_percent": user, "cpu_system_percent": system, "cpu_per_host": per_host,
            "peak_vsz_kib": self.peak_vsz_kib, "load": self.load, "duplicates": duplicates,
        })
    }
}

/// Waits until outboxd has recorded `expected` deliveries of the benchmark targets as
/// delivered (the sink sees a request before its settlement is written).
pub(crate) async fn wait_settled(svc: &Service, expected: u64) -> Result<(), String> {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let delivered = svc.count("delivered").await?;
        if delivered >= expected {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err(format!(
                "only {delivered} of {expected} deliveries were recorded as delivered"
            ));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_routed_round_is_set_against_its_two_neighbours() {
        // default, routed, default, routed, default
        let p = Paired::of(vec![100.0, 90.0, 80.0, 100.0, 120.0], 30);
        assert_eq!(p.ratios, [1.0, 1.0]);
        assert_eq!(p.median_ratio, 1.0);
        let p = Paired::of(vec![100.0, 50.0, 100.0, 100.0, 100.0, 95.0, 100.0], 30);
        assert_eq!(p.ratios, [0.5, 1.0, 0.95]);
        assert_eq!(p.median_ratio, 0.95, "one slow round does not move the median");
    }
}
