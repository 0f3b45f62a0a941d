//! Delivery against receivers that push back (issue 21): how outboxd's adaptive concurrency
//! limit fares against the testkit's load-dependent receiver models (`testkit::Behavior::admit`,
//! `token_bucket` and `queueing`, shared with the end-to-end tests in `tests/tests/adaptive.rs`
//! and checked by `tests/tests/harness.rs`; the bench depends on the testkit for them). Every
//! scenario starts an `outboxd serve` of its own (SQLite) whose targets have default manifests:
//! `plugin`, `events`, `concurrency = 16`, `allowed_hosts` and `[config] url`, and
//! `concurrency_mode = "fixed"` where said. The backlog is ingested with the targets paused;
//! the figures are read from what the receiver recorded, over a window that starts at the
//! first request it saw, and from `GET /v1/targets` (`concurrency_limit`), polled every 100 ms.
//!
//! 1. **Admit N at once** (N = 2, 4, 8): at most N requests in service, each answered 200 after
//!    20 ms, an immediate 503 with `Retry-After: 1` beyond. Goodput (successes a second) as a
//!    share of the receiver's capacity (N / 20 ms), and the refused share of all requests; for
//!    the adaptive target and, on the same host against a receiver of its own, a fixed one
//!    (today's behaviour, whose `Retry-After` pauses the whole target by default).
//! 2. **Capacity halving**: admit 8, then 4, then 8 again: the seconds until the reported
//!    limit followed each way (down to at most 4, back up to at least 8).
//! 3. **Queueing**: latency 20 ms up to 4 at once, 5 ms more for each beyond, never refusing:
//!    the limit it settles at, and the p99 latency at the receiver against its unloaded
//!    latency.
//! 4. **Token bucket**: 200 requests a second, a burst of 20, each taken one answered after
//!    10 ms, an immediate 429 with `Retry-After: 1` when the bucket is empty: successes as a
//!    share of what the bucket could give over the window (its burst and its rate), and the
//!    refused share.

use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use testkit::{Behavior, Load, Receiver, RecordedRequest};

use crate::service::{SQLITE, Service, TargetSpec, Webhook};
use crate::{Row, load, row, say};

/// The event type of every scenario (the targets take every event).
const EVENT: &str = "bench.created";
/// The admitting receivers' service time.
const SERVICE: Duration = Duration::from_millis(20);
/// How often `GET /v1/targets` is polled for the limit.
const POLL: Duration = Duration::from_millis(100);
/// The queueing receiver: unloaded latency, extra per request beyond `QUEUE_FREE` at once.
const QUEUE_BASE: Duration = Duration::from_millis(20);
const QUEUE_PER_REQUEST: Duration = Duration::from_millis(5);
const QUEUE_FREE: usize = 4;
/// The token bucket: rate a second, burst, time an admitted request takes.
const BUCKET_RATE: f64 = 200.0;
const BUCKET_BURST: u32 = 20;
const BUCKET_SERVICE: Duration = Duration::from_millis(10);

/// How long each scenario measures.
pub struct Sizes {
    /// The measuring window of the steady scenarios (admit, queueing, token bucket).
    window: Duration,
    /// How long the halving scenario runs at each capacity before it changes.
    settle: Duration,
    /// How long the halving scenario waits for the limit to follow, at most.
    follow: Duration,
}

impl Sizes {
    pub fn new(quick: bool) -> Self {
        if quick {
            Self {
                window: Duration::from_millis(400),
                settle: Duration::from_millis(300),
                follow: Duration::from_secs(2),
            }
        } else {
            Self {
                window: Duration::from_secs(3),
                settle: Duration::from_secs(2),
                follow: Duration::from_secs(10),
            }
        }
    }

    /// A backlog that lasts `seconds` of the scenario at `per_second` deliveries, with half as
    /// much again to spare.
    fn backlog(per_second: f64, seconds: f64) -> u64 {
        (per_second * seconds * 1.5).ceil() as u64
    }
}

/// One scenario's receiver and host.
struct Scenario {
    rx: Receiver,
    svc: Service,
}

impl Scenario {
    /// Starts a receiver with `paths` and a host with one target per path, named after it
    /// (without the slash), `fixed` ones with `concurrency_mode = "fixed"`; ingests `events`
    /// with the targets paused.
    async fn start(
        outboxd: &Path,
        plugins: &Path,
        paths: Vec<(&str, Behavior, bool)>,
        events: u64,
    ) -> Result<Self, String> {
        let mut builder = Receiver::builder().keep_requests(false);
        let mut specs: Vec<(String, bool)> = Vec::new();
        for (path, behavior, fixed) in paths {
            builder = builder.path(path, behavior);
            specs.push((path.to_owned(), fixed));
        }
        let rx = builder.try_start().await.map_err(|e| format!("receiver: {e}"))?;
        let targets: Vec<TargetSpec> = specs
            .iter()
            .map(|(path, fixed)| {
                let hook = Webhook::new(path.trim_start_matches('/'), &rx.url(path), &rx.authority());
                if *fixed { hook.fixed() } else { hook }.spec()
            })
            .collect();
        let svc = Service::start(outboxd, plugins, SQLITE, 1, &targets).await?;
        let api = reqwest::Client::builder()
            .no_proxy()
            .build()
            .map_err(|e| e.to_string())?;
        svc.pause(svc.names()).await?;
        let (done, _) = load::ingest(api.clone(), &svc.bases(), EVENT, 4, events, 1000, 0).await;
        if done.errors > 0 {
            return Err(format!("{} of the ingest's requests failed", done.errors));
        }
        Ok(Self { rx, svc })
    }

    async fn resume(&self) -> Result<(), String> {
        self.svc.resume(self.svc.names()).await
    }

    /// When the first request reached `path`, waiting for it at most 30 s.
    async fn first_request(&self, path: &str) -> Result<Instant, String> {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(first) = self.rx.requests_at(path).first() {
                return Ok(first.received_at);
            }
            if Instant::now() > deadline {
                return Err(format!(
                    "no request reached {path} within 30 s; targets: {}; outboxd logs: {}",
                    self.targets().await.unwrap_or_default(),
                    self.svc.log_paths()
                ));
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }

    /// `GET /v1/targets`.
    async fn targets(&self) -> Result<Value, String> {
        self.svc.targets().await
    }

    /// Target `name`'s `concurrency_limit.limit` now; `None` while it reports none.
    async fn limit(&self, name: &str) -> Result<Option<u64>, String> {
        let targets = self.targets().await?;
        Ok(targets
            .as_array()
            .into_iter()
            .flatten()
            .find(|t| t["name"] == name)
            .and_then(|t| t["concurrency_limit"]["limit"].as_u64()))
    }

    /// Polls the limits of `names` every [`POLL`] until `until`; the samples, as (time, limit
    /// of each name).
    async fn poll_until(&self, names: &[&str], until: Instant) -> Result<Vec<(Instant, Vec<Option<u64>>)>, String> {
        let mut samples = Vec::new();
        while Instant::now() < until {
            let at = Instant::now();
            let mut limits = Vec::with_capacity(names.len());
            for name in names {
                limits.push(self.limit(name).await?);
            }
            samples.push((at, limits));
            tokio::time::sleep_until((at + POLL).min(until).into()).await;
        }
        Ok(samples)
    }

    /// The requests to `path` that arrived in `[from, from + window)`.
    fn window(&self, path: &str, from: Instant, window: Duration) -> Vec<RecordedRequest> {
        self.rx
            .requests_at(path)
            .into_iter()
            .filter(|r| r.received_at >= from && r.received_at < from + window)
            .collect()
    }

    fn stop(self) {
        self.svc.stop();
    }
}

/// The median of the limits (of the name at `index`) sampled from `from` on; `None` if none
/// was reported.
fn settled_limit(samples: &[(Instant, Vec<Option<u64>>)], index: usize, from: Instant) -> Option<u64> {
    let mut limits: Vec<u64> = samples
        .iter()
        .filter(|(at, _)| *at >= from)
        .filter_map(|(_, l)| l[index])
        .collect();
    limits.sort_unstable();
    limits.get(limits.len() / 2).copied()
}

/// What the receiver saw of `reqs` (a window of `window` from `from`) in the window's second
/// half.
fn second_half(reqs: &[RecordedRequest], from: Instant, window: Duration) -> Load {
    Load::of(reqs.iter().filter(|r| r.received_at >= from + window / 2))
}

fn limit_text(limit: Option<u64>) -> String {
    limit.map_or_else(|| "not reported".to_owned(), |l| l.to_string())
}

fn ms(d: Option<Duration>) -> Option<f64> {
    d.map(|d| d.as_secs_f64() * 1000.0)
}

/// The adaptive scenarios, in order; returns their figures for the report.
pub async fn run(outboxd: &Path, plugins: &Path, quick: bool, rows: &mut Vec<Row>) -> Result<Value, String> {
    let sizes = Sizes::new(quick);
    let mut admit = Vec::new();
    for n in [2, 4, 8] {
        admit.push(admit_n(outboxd, plugins, &sizes, n, rows).await?);
    }
    let halving = halving(outboxd, plugins, &sizes, rows).await?;
    let queueing = queueing(outboxd, plugins, &sizes, rows).await?;
    let bucket = token_bucket(outboxd, plugins, &sizes, rows).await?;
    Ok(json!({
        "window_s": sizes.window.as_secs_f64(),
        "admit": admit, "halving": halving, "queueing": queueing, "token_bucket": bucket,
    }))
}

/// Goodput and refusals of one target against a receiver that admits `n` at once.
struct Admitted {
    goodput_share: f64,
    refused_share: f64,
    /// The refused share over the window's second half (once the limit had settled).
    refused_share_second_half: f64,
    limit: Option<u64>,
    load: Load,
}

impl Admitted {
    fn json(&self) -> Value {
        json!({
            "goodput_share_of_capacity": self.goodput_share, "refused_share": self.refused_share,
            "refused_share_second_half": self.refused_share_second_half,
            "settled_limit": self.limit, "requests": self.load.requests, "succeeded": self.load.succeeded,
            "refused": self.load.refused, "peak_concurrency": self.load.peak_concurrency,
        })
    }
}

/// Scenario 1 for one `n`: an adaptive target and a fixed one, each against a receiver of its
/// own that admits `n` at once.
async fn admit_n(
    outboxd: &Path,
    plugins: &Path,
    sizes: &Sizes,
    n: usize,
    rows: &mut Vec<Row>,
) -> Result<Value, String> {
    let capacity = n as f64 / SERVICE.as_secs_f64();
    let events = Sizes::backlog(capacity, sizes.window.as_secs_f64() + 1.0);
    say(&format!(
        "adaptive: admit {n} at once ({} ms each), {events} events to an adaptive and a fixed target",
        SERVICE.as_millis()
    ));
    let s = Scenario::start(
        outboxd,
        plugins,
        vec![
            ("/adaptive", Behavior::admit(n, SERVICE), false),
            ("/fixed", Behavior::admit(n, SERVICE), true),
        ],
        events,
    )
    .await?;
    s.resume().await?;
    let a0 = s.first_request("/adaptive").await?;
    let f0 = s.first_request("/fixed").await?;
    let samples = s.poll_until(&["adaptive", "fixed"], a0.max(f0) + sizes.window).await?;
    let measure = |path: &str, from: Instant, index: usize| {
        let reqs = s.window(path, from, sizes.window);
        let load = Load::of(&reqs);
        Admitted {
            goodput_share: load.succeeded as f64 / sizes.window.as_secs_f64() / capacity,
            refused_share: load.refused_share(),
            refused_share_second_half: second_half(&reqs, from, sizes.window).refused_share(),
            limit: settled_limit(&samples, index, from + sizes.window / 2),
            load,
        }
    };
    let adaptive = measure("/adaptive", a0, 0);
    let fixed = measure("/fixed", f0, 1);
    s.stop();
    rows.push(row(
        format!(
            "adaptive: admits {n} at once ({} ms each, 503 beyond)",
            SERVICE.as_millis()
        ),
        format!("{:.1} % of capacity", adaptive.goodput_share * 100.0),
        format!(
            "{:.1} % refused ({:.1} % in the second half), limit {}, {} at once at most; fixed (today): {:.1} % of capacity, {:.1} % refused",
            adaptive.refused_share * 100.0,
            adaptive.refused_share_second_half * 100.0,
            limit_text(adaptive.limit),
            adaptive.load.peak_concurrency,
            fixed.goodput_share * 100.0,
            fixed.refused_share * 100.0
        ),
    ));
    Ok(json!({
        "n": n, "service_ms": SERVICE.as_millis() as u64, "capacity_per_s": capacity, "events": events,
        "adaptive": adaptive.json(), "fixed": fixed.json(),
    }))
}

/// Scenario 2: admit 8, then 4, then 8 again.
async fn halving(outboxd: &Path, plugins: &Path, sizes: &Sizes, rows: &mut Vec<Row>) -> Result<Value, String> {
    const FULL: usize = 8;
    const HALF: usize = FULL / 2;
    let capacity = FULL as f64 / SERVICE.as_secs_f64();
    let seconds = 2.0 * (sizes.settle + sizes.follow).as_secs_f64() + 1.0;
    let events = Sizes::backlog(capacity, seconds);
    say(&format!(
        "adaptive: capacity {FULL} -> {HALF} -> {FULL} at once, {events} events"
    ));
    let s = Scenario::start(
        outboxd,
        plugins,
        vec![("/halving", Behavior::admit(FULL, SERVICE), false)],
        events,
    )
    .await?;
    s.resume().await?;
    let t0 = s.first_request("/halving").await?;
    let before = s.poll_until(&["halving"], t0 + sizes.settle).await?;
    let at_full = settled_limit(&before, 0, t0 + sizes.settle / 2);

    let (down, down_limits) = follow(&s, sizes, HALF, true).await?;
    let settle_from = Instant::now();
    let at_half_samples = s.poll_until(&["halving"], settle_from + sizes.settle).await?;
    let at_half = settled_limit(&at_half_samples, 0, settle_from + sizes.settle / 2);
    let (up, up_limits) = follow(&s, sizes, FULL, false).await?;
    let settle_from = Instant::now();
    let after = s.poll_until(&["halving"], settle_from + sizes.settle).await?;
    let at_full_again = settled_limit(&after, 0, settle_from + sizes.settle / 2);
    let load = s.rx.load_at("/halving");
    s.stop();

    let secs = |d: Option<Duration>| {
        d.map_or_else(
            || format!("not within {:.0} s", sizes.follow.as_secs_f64()),
            |d| format!("{:.1} s", d.as_secs_f64()),
        )
    };
    rows.push(row(
        format!("adaptive: capacity {FULL} -> {HALF} -> {FULL} at once, limit followed"),
        format!("down {}, up {}", secs(down), secs(up)),
        format!(
            "limit {} at {FULL}, {} at {HALF}, {} at {FULL} again (medians); {:.1} % refused over the run",
            limit_text(at_full),
            limit_text(at_half),
            limit_text(at_full_again),
            load.refused_share() * 100.0
        ),
    ));
    Ok(json!({
        "capacities": [FULL, HALF, FULL], "service_ms": SERVICE.as_millis() as u64, "events": events,
        "down_s": down.map(|d| d.as_secs_f64()), "up_s": up.map(|d| d.as_secs_f64()),
        "follow_limit_s": sizes.follow.as_secs_f64(),
        "limit_at_full": at_full, "limit_at_half": at_half, "limit_at_full_again": at_full_again,
        "limits_while_going_down": down_limits, "limits_while_going_up": up_limits,
        "refused_share": load.refused_share(), "requests": load.requests,
    }))
}

/// Changes the halving receiver's capacity to `capacity`, then polls the limit every [`POLL`]
/// until it has followed: at most `capacity` going `down`, at least it going up. How long that
/// took (`None`: not within `sizes.follow`), and the limits seen meanwhile.
async fn follow(
    s: &Scenario,
    sizes: &Sizes,
    capacity: usize,
    down: bool,
) -> Result<(Option<Duration>, Vec<u64>), String> {
    s.rx.behave("/halving", Behavior::admit(capacity, SERVICE));
    let changed = Instant::now();
    let mut limits = Vec::new();
    while changed.elapsed() < sizes.follow {
        let limit = s.limit("halving").await?;
        limits.extend(limit);
        let target = capacity as u64;
        if limit.is_some_and(|l| if down { l <= target } else { l >= target }) {
            return Ok((Some(changed.elapsed()), limits));
        }
        tokio::time::sleep(POLL).await;
    }
    Ok((None, limits))
}

/// Scenario 3: a receiver whose latency grows with the requests in service.
async fn queueing(outboxd: &Path, plugins: &Path, sizes: &Sizes, rows: &mut Vec<Row>) -> Result<Value, String> {
    // Beyond `QUEUE_FREE` at once its throughput stays about `QUEUE_FREE / QUEUE_BASE`.
    let throughput = QUEUE_FREE as f64 / QUEUE_BASE.as_secs_f64();
    let events = Sizes::backlog(throughput, sizes.window.as_secs_f64() + 1.0);
    let model = format!(
        "{} ms, {} ms more per request beyond {QUEUE_FREE} at once",
        QUEUE_BASE.as_millis(),
        QUEUE_PER_REQUEST.as_millis()
    );
    say(&format!("adaptive: queueing receiver ({model}), {events} events"));
    let s = Scenario::start(
        outboxd,
        plugins,
        vec![(
            "/queue",
            Behavior::queueing(QUEUE_BASE, QUEUE_PER_REQUEST, QUEUE_FREE),
            false,
        )],
        events,
    )
    .await?;
    s.resume().await?;
    let t0 = s.first_request("/queue").await?;
    let samples = s.poll_until(&["queue"], t0 + sizes.window).await?;
    let limit = settled_limit(&samples, 0, t0 + sizes.window / 2);
    let reqs = s.window("/queue", t0, sizes.window);
    s.stop();

    let load = Load::of(&reqs);
    let steady = second_half(&reqs, t0, sizes.window);
    // Unloaded: what it took when it was serving no more than `QUEUE_FREE`.
    let unloaded = Load::of(reqs.iter().filter(|r| r.in_progress < QUEUE_FREE))
        .latency_quantile(0.5)
        .unwrap_or(QUEUE_BASE);
    let p99 = load.latency_quantile(0.99);
    let p99_steady = steady.latency_quantile(0.99);
    let ratio = |p: Option<Duration>| p.map(|p| p.as_secs_f64() / unloaded.as_secs_f64());
    let per_second = load.succeeded as f64 / sizes.window.as_secs_f64();
    rows.push(row(
        format!("adaptive: queueing receiver ({model})"),
        format!("limit {}", limit_text(limit)),
        format!(
            "p99 at the receiver {:.2} x unloaded ({:.1} ms / {:.1} ms), second half {:.2} x; {per_second:.0} requests/s, {} at once at most, {} refused",
            ratio(p99).unwrap_or(f64::NAN),
            ms(p99).unwrap_or(f64::NAN),
            unloaded.as_secs_f64() * 1000.0,
            ratio(p99_steady).unwrap_or(f64::NAN),
            load.peak_concurrency,
            load.refused
        ),
    ));
    Ok(json!({
        "base_ms": QUEUE_BASE.as_millis() as u64, "per_request_ms": QUEUE_PER_REQUEST.as_millis() as u64,
        "free": QUEUE_FREE, "events": events, "settled_limit": limit,
        "unloaded_ms": unloaded.as_secs_f64() * 1000.0, "p99_ms": ms(p99), "p99_to_unloaded": ratio(p99),
        "p99_second_half_ms": ms(p99_steady), "p99_second_half_to_unloaded": ratio(p99_steady),
        "per_second": per_second, "peak_concurrency": load.peak_concurrency,
        "requests": load.requests, "refused": load.refused,
    }))
}

/// Scenario 4: a token-bucket rate limit.
async fn token_bucket(outboxd: &Path, plugins: &Path, sizes: &Sizes, rows: &mut Vec<Row>) -> Result<Value, String> {
    let events = Sizes::backlog(BUCKET_RATE, sizes.window.as_secs_f64() + 1.0);
    let model = format!(
        "{BUCKET_RATE:.0}/s, burst {BUCKET_BURST}, {} ms each, 429 when empty",
        BUCKET_SERVICE.as_millis()
    );
    say(&format!("adaptive: token bucket ({model}), {events} events"));
    let s = Scenario::start(
        outboxd,
        plugins,
        vec![(
            "/bucket",
            Behavior::token_bucket(BUCKET_RATE, BUCKET_BURST).service_time(BUCKET_SERVICE),
            false,
        )],
        events,
    )
    .await?;
    s.resume().await?;
    let t0 = s.first_request("/bucket").await?;
    let samples = s.poll_until(&["bucket"], t0 + sizes.window).await?;
    let limit = settled_limit(&samples, 0, t0 + sizes.window / 2);
    let reqs = s.window("/bucket", t0, sizes.window);
    s.stop();
    let load = Load::of(&reqs);
    let steady = second_half(&reqs, t0, sizes.window);
    let steady_could = BUCKET_RATE * sizes.window.as_secs_f64() / 2.0;

    // What the bucket could give over the window: its burst, then its rate.
    let could = f64::from(BUCKET_BURST) + BUCKET_RATE * sizes.window.as_secs_f64();
    let share = load.succeeded as f64 / could;
    rows.push(row(
        format!("adaptive: token bucket ({model})"),
        format!("{:.1} % of its rate", share * 100.0),
        format!(
            "{:.1} % refused, limit {}; {} taken of {could:.0} the bucket could give; second half {:.1} % of its rate, {:.1} % refused",
            load.refused_share() * 100.0,
            limit_text(limit),
            load.succeeded,
            steady.succeeded as f64 / steady_could * 100.0,
            steady.refused_share() * 100.0
        ),
    ));
    Ok(json!({
        "rate_per_s": BUCKET_RATE, "burst": BUCKET_BURST, "service_ms": BUCKET_SERVICE.as_millis() as u64,
        "events": events, "share_of_rate": share, "refused_share": load.refused_share(),
        "second_half_share_of_rate": steady.succeeded as f64 / steady_could,
        "second_half_refused_share": steady.refused_share(),
        "settled_limit": limit, "requests": load.requests, "succeeded": load.succeeded, "refused": load.refused,
    }))
}
