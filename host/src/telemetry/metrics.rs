//! Prometheus metrics: the one process-wide registry, the metric families, the one-line
//! recording functions and the OpenMetrics text encoder (`prometheus-client`). The HTTP API
//! only serves the text ([`render`]); nothing here knows HTTP.
//!
//! Two kinds of series:
//! - **recorded** where things happen, by one-line calls from the module that owns the event:
//!   [`events_ingested`] (the front door, `outbox`), [`ingest_request`] (the ingest route),
//!   [`attempt_finished`] (dispatcher), [`plugin_loaded`] and [`reload_finished`] (target
//!   registry), [`source_lag`] (sources), [`replay_chunk`] (bulk replay jobs);
//! - **read at scrape time** from the store, the registry and the breakers (deliveries per
//!   status, lag, breaker state, manual pause, loaded targets): the caller reads them into a
//!   [`Scrape`], so they are the database's truth, not a counter that could drift from it.
//!
//! Labels are low-cardinality only: target and source names, statuses, outcomes, results,
//! origins. Never event or delivery ids.
//!
//! The same module keeps a short in-memory window of attempt outcomes per target (the
//! dashboard's "success rate over the last minutes").

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::atomic::AtomicU64;
use std::sync::{LazyLock, Mutex};
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::{Registry, Unit};

use crate::domain::{AttemptOutcome, DeliveryStatus, Millis, now_ms};

/// How long the in-memory outcome window reaches back.
pub const RECENT_WINDOW: Duration = Duration::from_secs(5 * 60);
const BUCKET_MS: Millis = 60_000;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TargetLabel {
    target: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct AttemptLabels {
    target: String,
    outcome: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StatusLabels {
    target: String,
    status: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct BreakerLabels {
    target: String,
    state: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ResultLabel {
    result: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct IngestLabels {
    result: String,
    origin: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct FilterLabels {
    target: String,
    result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct LoadLabel {
    from: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct SourceLabel {
    source: String,
}

type FloatGauge = Gauge<f64, AtomicU64>;

/// 1 ms to about 65 s, doubling.
fn seconds_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.001, 2.0, 17))
}

/// Every metric family, and the registry that encodes them.
struct Metrics {
    registry: Registry,
    events_ingested: Family<IngestLabels, Counter>,
    ingest_seconds: Histogram,
    attempts: Family<AttemptLabels, Counter>,
    attempt_seconds: Family<TargetLabel, Histogram, fn() -> Histogram>,
    reloads: Family<ResultLabel, Counter>,
    plugin_load_seconds: Family<LoadLabel, Histogram, fn() -> Histogram>,
    deliveries: Family<StatusLabels, Gauge>,
    lag: Family<TargetLabel, FloatGauge>,
    breaker: Family<BreakerLabels, Gauge>,
    breaker_failures: Family<TargetLabel, Gauge>,
    paused: Family<TargetLabel, Gauge>,
    targets_loaded: Gauge,
    reload_errors: Gauge,
    source_lag: Family<SourceLabel, FloatGauge>,
    concurrency_limit: Family<TargetLabel, Gauge>,
    pace: Family<TargetLabel, FloatGauge>,
    refusals: Family<TargetLabel, Counter>,
    retries_held: Family<TargetLabel, Counter>,
    filter_events: Family<FilterLabels, Counter>,
    store_statements: Counter,
    replayed_by_jobs: Family<ResultLabel, Counter>,
    recent: Mutex<Recent>,
    /// Serialises scrapes: each clears and refills the scrape-time gauges.
    scrape: Mutex<()>,
}

impl Metrics {
    fn new() -> Self {
        let mut registry = Registry::with_prefix("outboxd");
        let events_ingested = Family::<IngestLabels, Counter>::default();
        registry.register(
            "events_ingested",
            "Events taken in, by result (accepted: stored; duplicate: a known idempotency key, nothing written) and origin (api: POST /v1/events; source: relayed from an application outbox table; operational: outboxd's own events)",
            events_ingested.clone(),
        );
        let ingest_seconds = Histogram::new(exponential_buckets(0.0005, 2.0, 16));
        registry.register_with_unit(
            "ingest_request_duration",
            "Time to answer POST /v1/events, validation and the ingest transaction included",
            Unit::Seconds,
            ingest_seconds.clone(),
        );
        let attempts = Family::<AttemptLabels, Counter>::default();
        registry.register(
            "attempts",
            "Finished delivery attempts, by target and outcome (delivered, retry, permanent)",
            attempts.clone(),
        );
        let attempt_seconds = Family::new_with_constructor(seconds_histogram as fn() -> Histogram);
        registry.register_with_unit(
            "attempt_duration",
            "Plugin call time of each attempt, by target (for a batch, the whole call, observed once per event)",
            Unit::Seconds,
            attempt_seconds.clone(),
        );
        let reloads = Family::<ResultLabel, Counter>::default();
        registry.register(
            "plugin_reloads",
            "Reloads of the plugins directory (start-up included), by result (ok, or error: some file could not be loaded)",
            reloads.clone(),
        );
        let plugin_load_seconds = Family::new_with_constructor(seconds_histogram as fn() -> Histogram);
        registry.register_with_unit(
            "plugin_load_duration",
            "Time to compile and validate a plugin file (from=compile) or to load it from the compile cache (from=cache)",
            Unit::Seconds,
            plugin_load_seconds.clone(),
        );
        let deliveries = Family::<StatusLabels, Gauge>::default();
        registry.register(
            "deliveries",
            "Deliveries in the database, by target and status (pending, in_flight, delivered, dead, discarded, paused, cancelled); read at scrape time",
            deliveries.clone(),
        );
        let lag = Family::<TargetLabel, FloatGauge>::default();
        registry.register_with_unit(
            "delivery_lag",
            "Age of the oldest due pending delivery of each target (0 when nothing is due); read at scrape time",
            Unit::Seconds,
            lag.clone(),
        );
        let breaker = Family::<BreakerLabels, Gauge>::default();
        registry.register(
            "breaker_state",
            "Circuit breaker of each target: 1 for its current state (closed, open, half_open), 0 for the others",
            breaker.clone(),
        );
        let breaker_failures = Family::<TargetLabel, Gauge>::default();
        registry.register(
            "breaker_consecutive_failures",
            "Consecutive retryable failures the circuit breaker of each target has seen",
            breaker_failures.clone(),
        );
        let paused = Family::<TargetLabel, Gauge>::default();
        registry.register(
            "target_paused",
            "1 while a target is paused by hand (POST /v1/targets/{name}/pause), else 0",
            paused.clone(),
        );
        let targets_loaded = Gauge::default();
        registry.register("targets_loaded", "Targets loaded and serving", targets_loaded.clone());
        let reload_errors = Gauge::default();
        registry.register(
            "reload_errors",
            "Files that failed at the last reload (see last_reload_error in GET /v1/targets)",
            reload_errors.clone(),
        );
        let source_lag = Family::<SourceLabel, FloatGauge>::default();
        registry.register_with_unit(
            "source_lag",
            "Age of the oldest row each source has not relayed yet (0 when caught up)",
            Unit::Seconds,
            source_lag.clone(),
        );
        let concurrency_limit = Family::<TargetLabel, Gauge>::default();
        registry.register(
            "concurrency_limit",
            "Attempts of each target that may run at once now (adaptive: learned from the receiver; fixed: its concurrency); read at scrape time",
            concurrency_limit.clone(),
        );
        let pace = Family::<TargetLabel, FloatGauge>::default();
        registry.register(
            "pace",
            "Attempts a second each target is paced at while its receiver limits its rate (429s; learned from what it takes); absent otherwise; read at scrape time",
            pace.clone(),
        );
        let refusals = Family::<TargetLabel, Counter>::default();
        registry.register(
            "refusals",
            "Attempts the receiver refused (429, 503, a refused connection, a timeout), by target",
            refusals.clone(),
        );
        let retries_held = Family::<TargetLabel, Counter>::default();
        registry.register(
            "retries_held",
            "Retries held back by the target's retry budget (each waits, uncounted, and goes again later)",
            retries_held.clone(),
        );
        let filter_events = Family::<FilterLabels, Counter>::default();
        registry.register(
            "filter_events",
            "Events a target's payload filter was asked about, by result: matched (a delivery), skipped (none), error (the filter failed on the event: none)",
            filter_events.clone(),
        );
        let store_statements = Counter::default();
        registry.register(
            "store_statements",
            "Statements sent to a PostgreSQL store (BEGIN and COMMIT included): with the deliveries and events, the database's round trips per unit of work",
            store_statements.clone(),
        );
        let replayed_by_jobs = Family::<ResultLabel, Counter>::default();
        registry.register(
            "replay_job_deliveries",
            "Deliveries reached by bulk replay jobs in this process, by result: replayed (pending again), skipped (their event's payload was erased)",
            replayed_by_jobs.clone(),
        );
        Self {
            registry,
            store_statements,
            replayed_by_jobs,
            concurrency_limit,
            pace,
            refusals,
            retries_held,
            filter_events,
            events_ingested,
            ingest_seconds,
            attempts,
            attempt_seconds,
            reloads,
            plugin_load_seconds,
            deliveries,
            lag,
            breaker,
            breaker_failures,
            paused,
            targets_loaded,
            reload_errors,
            source_lag,
            recent: Mutex::new(Recent::default()),
            scrape: Mutex::new(()),
        }
    }
}

static METRICS: LazyLock<Metrics> = LazyLock::new(Metrics::new);

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Records events taken in from `origin`: `accepted` stored, `duplicates` known idempotency
/// keys (nothing written).
pub fn events_ingested(origin: &str, accepted: usize, duplicates: usize) {
    let m = &*METRICS;
    for (result, n) in [("accepted", accepted), ("duplicate", duplicates)] {
        if n > 0 {
            m.events_ingested
                .get_or_create(&IngestLabels {
                    result: result.into(),
                    origin: origin.into(),
                })
                .inc_by(n as u64);
        }
    }
}

/// Counts `n` statements sent to a PostgreSQL store.
pub fn store_statements(n: u64) {
    METRICS.store_statements.inc_by(n);
}

/// Counts what one chunk of a bulk replay job did: `replayed` deliveries pending again,
/// `skipped` ones of erased events.
pub fn replay_chunk(replayed: u64, skipped: u64) {
    for (result, n) in [("replayed", replayed), ("skipped", skipped)] {
        if n > 0 {
            METRICS
                .replayed_by_jobs
                .get_or_create(&ResultLabel { result: result.into() })
                .inc_by(n);
        }
    }
}

/// Records how long one `POST /v1/events` took.
pub fn ingest_request(took: Duration) {
    METRICS.ingest_seconds.observe(took.as_secs_f64());
}

/// Records one finished attempt of `target` (for a batch: one call per event) and how long
/// the plugin call took.
pub fn attempt_finished(target: &str, outcome: AttemptOutcome, took: Duration) {
    let m = &*METRICS;
    m.attempts
        .get_or_create(&AttemptLabels {
            target: target.into(),
            outcome: outcome.as_str().into(),
        })
        .inc();
    m.attempt_seconds
        .get_or_create(&TargetLabel { target: target.into() })
        .observe(took.as_secs_f64());
    lock(&m.recent).record(target, outcome, now_ms());
}

/// Records one plugin file made ready, compiled or from the cache, and how long it took.
pub fn plugin_loaded(from_cache: bool, took: Duration) {
    let from = if from_cache { "cache" } else { "compile" };
    METRICS
        .plugin_load_seconds
        .get_or_create(&LoadLabel { from: from.into() })
        .observe(took.as_secs_f64());
}

/// Records one reload of the plugins directory and how many files failed in it.
pub fn reload_finished(errors: usize) {
    let result = if errors == 0 { "ok" } else { "error" };
    METRICS
        .reloads
        .get_or_create(&ResultLabel { result: result.into() })
        .inc();
}

/// The hook for sources (application outbox tables relayed into outboxd): sets the age of
/// the oldest row `source` has not relayed yet, `Duration::ZERO` when caught up. A source
/// calls it after every poll; the series exists from its first call.
pub fn source_lag(source: &str, lag: Duration) {
    METRICS
        .source_lag
        .get_or_create(&SourceLabel { source: source.into() })
        .set(lag.as_secs_f64());
}

/// Records an attempt of `target` that the receiver refused.
pub fn refusal(target: &str) {
    METRICS
        .refusals
        .get_or_create(&TargetLabel { target: target.into() })
        .inc();
}

/// Records what `target`'s payload filter decided on one event: `Some(true)` matched,
/// `Some(false)` skipped, `None` the filter failed on it.
pub fn filter_decided(target: &str, decided: Option<bool>) {
    let result = match decided {
        Some(true) => "matched",
        Some(false) => "skipped",
        None => "error",
    };
    METRICS
        .filter_events
        .get_or_create(&FilterLabels {
            target: target.into(),
            result,
        })
        .inc();
}

/// Records a retry of `target` held back by its retry budget.
pub fn retry_held(target: &str) {
    METRICS
        .retries_held
        .get_or_create(&TargetLabel { target: target.into() })
        .inc();
}

/// Attempt outcomes of one target in the recent window.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct RecentOutcomes {
    pub delivered: u64,
    pub failed: u64,
}

impl RecentOutcomes {
    /// Delivered attempts over all attempts; `None` without attempts.
    pub fn success_rate(&self) -> Option<f64> {
        let all = self.delivered + self.failed;
        (all > 0).then(|| self.delivered as f64 / all as f64)
    }
}

/// Attempt outcomes per target over the last [`RECENT_WINDOW`] (in this process).
pub fn recent_outcomes() -> BTreeMap<String, RecentOutcomes> {
    lock(&METRICS.recent).totals(now_ms())
}

/// Per target, per-minute counts of outcomes, newest last.
#[derive(Debug, Default)]
struct Recent {
    targets: HashMap<String, VecDeque<(Millis, RecentOutcomes)>>,
}

impl Recent {
    fn record(&mut self, target: &str, outcome: AttemptOutcome, now: Millis) {
        let minute = now - now.rem_euclid(BUCKET_MS);
        let buckets = self.targets.entry(target.to_owned()).or_default();
        if buckets.back().is_none_or(|(m, _)| *m != minute) {
            buckets.push_back((minute, RecentOutcomes::default()));
        }
        if let Some((_, counts)) = buckets.back_mut() {
            match outcome {
                AttemptOutcome::Delivered => counts.delivered += 1,
                AttemptOutcome::Retry | AttemptOutcome::Permanent => counts.failed += 1,
                AttemptOutcome::Running | AttemptOutcome::Abandoned => {}
            }
        }
        Self::expire(buckets, now);
    }

    fn expire(buckets: &mut VecDeque<(Millis, RecentOutcomes)>, now: Millis) {
        let oldest = now - RECENT_WINDOW.as_millis() as Millis;
        while buckets.front().is_some_and(|(m, _)| *m + BUCKET_MS <= oldest) {
            buckets.pop_front();
        }
    }

    fn totals(&mut self, now: Millis) -> BTreeMap<String, RecentOutcomes> {
        self.targets.retain(|_, buckets| {
            Self::expire(buckets, now);
            !buckets.is_empty()
        });
        self.targets
            .iter()
            .map(|(target, buckets)| {
                let total = buckets
                    .iter()
                    .fold(RecentOutcomes::default(), |acc, (_, c)| RecentOutcomes {
                        delivered: acc.delivered + c.delivered,
                        failed: acc.failed + c.failed,
                    });
                (target.clone(), total)
            })
            .collect()
    }
}

/// A circuit breaker as the gauges show it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BreakerGauge {
    /// `closed`, `open` or `half_open`.
    pub state: &'static str,
    pub consecutive_failures: u32,
}

/// What the scrape-time gauges are set from, read by the caller from the store, the target
/// registry and the breakers just before [`render`].
#[derive(Debug, Default)]
pub struct Scrape {
    /// Deliveries per status, per target (`Store::status_counts`).
    pub counts: BTreeMap<String, BTreeMap<DeliveryStatus, u64>>,
    /// Per target, the due time of its oldest due pending delivery (`Store::oldest_due`).
    pub oldest_due: BTreeMap<String, Millis>,
    /// Targets paused by hand.
    pub paused: Vec<String>,
    /// Targets loaded and serving.
    pub loaded: Vec<String>,
    /// Files that failed at the last reload.
    pub reload_errors: usize,
    /// The breaker of each target that has one.
    pub breakers: BTreeMap<String, BreakerGauge>,
    /// The concurrency limit in force of each target that has run.
    pub limits: BTreeMap<String, u32>,
    /// The pace in force of each target paced now (attempts a second).
    pub paces: BTreeMap<String, f64>,
    pub now: Millis,
}

impl Scrape {
    /// Every target the operator may care about: loaded ones, and any with deliveries.
    pub fn targets(&self) -> Vec<String> {
        let mut targets: Vec<String> = self.loaded.clone();
        targets.extend(self.counts.keys().cloned());
        targets.sort();
        targets.dedup();
        targets
    }
}

/// Sets the scrape-time gauges from `input` and renders every metric in the OpenMetrics text
/// format.
pub fn render(input: &Scrape) -> Result<String, std::fmt::Error> {
    let m = &*METRICS;
    let _scrape = lock(&m.scrape);
    m.deliveries.clear();
    m.lag.clear();
    m.breaker.clear();
    m.breaker_failures.clear();
    m.paused.clear();
    m.concurrency_limit.clear();
    m.pace.clear();
    for target in input.targets() {
        let counts = input.counts.get(&target);
        for status in DeliveryStatus::ALL {
            let n = counts.and_then(|c| c.get(status)).copied().unwrap_or(0);
            m.deliveries
                .get_or_create(&StatusLabels {
                    target: target.clone(),
                    status: status.as_str().into(),
                })
                .set(n as i64);
        }
        let lag_ms = input.oldest_due.get(&target).map_or(0, |due| (input.now - due).max(0));
        m.lag
            .get_or_create(&TargetLabel { target: target.clone() })
            .set(lag_ms as f64 / 1000.0);
        m.paused
            .get_or_create(&TargetLabel { target: target.clone() })
            .set(i64::from(input.paused.contains(&target)));
        if let Some(limit) = input.limits.get(&target) {
            m.concurrency_limit
                .get_or_create(&TargetLabel { target: target.clone() })
                .set(i64::from(*limit));
        }
        if let Some(pace) = input.paces.get(&target) {
            m.pace.get_or_create(&TargetLabel { target: target.clone() }).set(*pace);
        }
        if let Some(b) = input.breakers.get(&target) {
            for s in ["closed", "open", "half_open"] {
                m.breaker
                    .get_or_create(&BreakerLabels {
                        target: target.clone(),
                        state: s.into(),
                    })
                    .set(i64::from(s == b.state));
            }
            m.breaker_failures
                .get_or_create(&TargetLabel { target: target.clone() })
                .set(i64::from(b.consecutive_failures));
        }
    }
    m.targets_loaded.set(input.loaded.len() as i64);
    m.reload_errors.set(input.reload_errors as i64);

    let mut out = String::new();
    prometheus_client::encoding::text::encode(&mut out, &m.registry)?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_recent_window_counts_the_last_five_minutes_only() {
        let mut r = Recent::default();
        let t0: Millis = 1_000_000 * BUCKET_MS;
        r.record("crm", AttemptOutcome::Retry, t0);
        r.record("crm", AttemptOutcome::Delivered, t0 + 1);
        r.record("crm", AttemptOutcome::Delivered, t0 + 2 * BUCKET_MS);
        r.record("billing", AttemptOutcome::Permanent, t0 + 2 * BUCKET_MS);
        let now = t0 + 3 * BUCKET_MS;
        let totals = r.totals(now);
        assert_eq!(
            totals["crm"],
            RecentOutcomes {
                delivered: 2,
                failed: 1
            }
        );
        assert_eq!(totals["crm"].success_rate(), Some(2.0 / 3.0));
        assert_eq!(totals["billing"].success_rate(), Some(0.0));

        // Six minutes after the first bucket, it has left the window.
        let later = t0 + 6 * BUCKET_MS;
        let totals = r.totals(later);
        assert_eq!(
            totals["crm"],
            RecentOutcomes {
                delivered: 1,
                failed: 0
            }
        );
        // Eight minutes on, nothing is left at all.
        assert!(r.totals(t0 + 8 * BUCKET_MS).is_empty());
    }

    #[test]
    fn recorded_series_appear_in_the_text_format() {
        attempt_finished("metrics-unit", AttemptOutcome::Delivered, Duration::from_millis(3));
        source_lag("orders-unit", Duration::from_millis(1500));
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &METRICS.registry).unwrap();
        assert!(
            out.contains(r#"outboxd_attempts_total{target="metrics-unit",outcome="delivered"} 1"#),
            "{out}"
        );
        assert!(
            out.contains(r#"outboxd_source_lag_seconds{source="orders-unit"} 1.5"#),
            "{out}"
        );
        assert!(
            out.contains("# TYPE outboxd_attempt_duration_seconds histogram"),
            "{out}"
        );
        assert!(out.ends_with("# EOF\n"), "{out}");
    }
}
