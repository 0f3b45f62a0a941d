//! The recent history the dashboard draws: per target, a fixed ring of one-minute buckets over
//! the last [`HISTORY_MINUTES`] minutes, each holding the attempts that ended delivered, retried
//! (failed, to be tried again) or failed (failed for good: dead or discarded), a small latency
//! histogram of those attempts, and the target's backlog as last sampled in that minute.
//!
//! Kept in memory, in this process only: recording is one short mutex section on the
//! dispatcher's path (a hash lookup, an index, a few increments), nothing is written to the
//! store, and the history is lost on restart, which a chart of the last hours can afford. The
//! memory is fixed: [`HISTORY_MINUTES`] buckets of [`Bucket`] (about 290 bytes) per target,
//! about 100 KiB per target that has delivered or been sampled, allocated at its first record.
//!
//! Latency quantiles come from a log-spaced histogram of [`LATENCY_BUCKETS`] counters per
//! minute: three per doubling from 0.1 ms, so up to about 4.7 minutes; a quantile is the
//! geometric middle of its bucket, within 13 % of the true value.

use std::collections::{BTreeMap, HashMap};
use std::sync::{LazyLock, Mutex};
use std::time::Duration;

use crate::domain::{AttemptOutcome, DeliveryStatus, Millis, now_ms};

/// Minutes of history kept per target (6 hours).
pub const HISTORY_MINUTES: usize = 360;
/// The width of one bucket.
pub const BUCKET_MS: Millis = 60_000;
/// Latency counters per bucket.
pub const LATENCY_BUCKETS: usize = 64;
/// The lower edge of the first latency bucket, in milliseconds.
const LATENCY_FLOOR_MS: f64 = 0.1;
/// Buckets per doubling.
const PER_DOUBLING: f64 = 3.0;

/// What one finished attempt counts as in the history.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ended {
    /// The receiver took it.
    Delivered,
    /// It failed and the delivery goes again later.
    Retried,
    /// It failed and the delivery gave up (dead or discarded).
    Failed,
}

impl Ended {
    /// What an attempt with `outcome` that left its delivery in `status` counts as; `None`
    /// for outcomes that are no attempt's end (running, abandoned).
    pub fn of(outcome: AttemptOutcome, status: DeliveryStatus) -> Option<Self> {
        match outcome {
            AttemptOutcome::Delivered => Some(Self::Delivered),
            AttemptOutcome::Retry | AttemptOutcome::Permanent => {
                Some(if matches!(status, DeliveryStatus::Dead | DeliveryStatus::Discarded) {
                    Self::Failed
                } else {
                    Self::Retried
                })
            }
            AttemptOutcome::Running | AttemptOutcome::Abandoned => None,
        }
    }
}

/// One minute of one target.
#[derive(Debug, Clone, Copy)]
struct Bucket {
    /// The minute's start; `Millis::MIN` for a slot never used.
    minute: Millis,
    delivered: u32,
    retried: u32,
    failed: u32,
    latency: [u32; LATENCY_BUCKETS],
    /// The backlog (pending, in flight, paused) last sampled in this minute.
    backlog: Option<u64>,
}

impl Bucket {
    const EMPTY: Bucket = Bucket {
        minute: Millis::MIN,
        delivered: 0,
        retried: 0,
        failed: 0,
        latency: [0; LATENCY_BUCKETS],
        backlog: None,
    };

    fn fresh(minute: Millis) -> Self {
        Self { minute, ..Self::EMPTY }
    }
}

/// The latency counter of a duration.
fn latency_index(took: Duration) -> usize {
    let ms = took.as_secs_f64() * 1000.0;
    if ms < LATENCY_FLOOR_MS {
        return 0;
    }
    let i = ((ms / LATENCY_FLOOR_MS).log2() * PER_DOUBLING).floor();
    (i as usize).min(LATENCY_BUCKETS - 1)
}

/// The geometric middle of latency counter `i`, in milliseconds.
fn latency_value(i: usize) -> f64 {
    LATENCY_FLOOR_MS * ((i as f64 + 0.5) / PER_DOUBLING).exp2()
}

/// The `q` quantile (0..=1) of a latency histogram; `None` when it is empty.
fn quantile(latency: &[u32; LATENCY_BUCKETS], q: f64) -> Option<f64> {
    let total: u64 = latency.iter().map(|&n| u64::from(n)).sum();
    if total == 0 {
        return None;
    }
    // The rank of the quantile, 1-based: the smallest value with at least q of all at or below.
    let rank = ((q * total as f64).ceil() as u64).clamp(1, total);
    let mut seen = 0;
    for (i, &n) in latency.iter().enumerate() {
        seen += u64::from(n);
        if seen >= rank {
            return Some(latency_value(i));
        }
    }
    None
}

/// One target's ring: slot `minute / BUCKET_MS % HISTORY_MINUTES` holds that minute while it
/// is among the last [`HISTORY_MINUTES`].
struct Ring {
    slots: Box<[Bucket]>,
}

impl Ring {
    fn new() -> Self {
        Self {
            slots: vec![Bucket::EMPTY; HISTORY_MINUTES].into_boxed_slice(),
        }
    }

    /// The bucket of the minute of `now`, emptied first when it still held an older minute.
    fn current(&mut self, now: Millis) -> &mut Bucket {
        let minute = now - now.rem_euclid(BUCKET_MS);
        let slot = &mut self.slots[(minute / BUCKET_MS).rem_euclid(HISTORY_MINUTES as Millis) as usize];
        if slot.minute != minute {
            *slot = Bucket::fresh(minute);
        }
        slot
    }

    /// The bucket of `minute`, if the ring still holds it.
    fn at(&self, minute: Millis) -> Option<&Bucket> {
        let slot = &self.slots[(minute / BUCKET_MS).rem_euclid(HISTORY_MINUTES as Millis) as usize];
        (slot.minute == minute).then_some(slot)
    }
}

/// One minute of a series, as the API shows it.
#[derive(Debug, Clone, PartialEq)]
pub struct Point {
    /// The minute's start.
    pub minute: Millis,
    pub delivered: u64,
    pub retried: u64,
    pub failed: u64,
    /// Latency quantiles of the minute's attempts, in milliseconds; `None` without attempts.
    pub p50_ms: Option<f64>,
    pub p99_ms: Option<f64>,
    /// The backlog sampled in that minute (for all targets: the sum of those sampled).
    pub backlog: Option<u64>,
}

/// The series of the last minutes: every target's, and all of them together.
#[derive(Debug, Clone, PartialEq)]
pub struct Series {
    /// All targets together (latency quantiles of the merged histograms).
    pub all: Vec<Point>,
    /// Per target, by name.
    pub targets: BTreeMap<String, Vec<Point>>,
}

/// The history of every target.
#[derive(Default)]
pub struct History {
    rings: Mutex<HashMap<String, Ring>>,
}

impl History {
    fn with_ring(&self, target: &str, f: impl FnOnce(&mut Ring)) {
        let mut rings = self.rings.lock().unwrap_or_else(|e| e.into_inner());
        match rings.get_mut(target) {
            Some(ring) => f(ring),
            None => f(rings.entry(target.to_owned()).or_insert_with(Ring::new)),
        }
    }

    /// Counts one attempt of `target` that ended as `ended` after `took`, at `now`.
    pub fn record(&self, target: &str, ended: Ended, took: Duration, now: Millis) {
        self.with_ring(target, |ring| {
            let b = ring.current(now);
            match ended {
                Ended::Delivered => b.delivered = b.delivered.saturating_add(1),
                Ended::Retried => b.retried = b.retried.saturating_add(1),
                Ended::Failed => b.failed = b.failed.saturating_add(1),
            }
            let i = latency_index(took);
            b.latency[i] = b.latency[i].saturating_add(1);
        });
    }

    /// Sets the backlog of each target as sampled at `now`; a target with history that is
    /// not in `backlog` has none left (0).
    pub fn sample_backlog(&self, backlog: &BTreeMap<String, u64>, now: Millis) {
        let mut rings = self.rings.lock().unwrap_or_else(|e| e.into_inner());
        for target in backlog.keys() {
            if !rings.contains_key(target.as_str()) {
                rings.insert(target.clone(), Ring::new());
            }
        }
        for (target, ring) in rings.iter_mut() {
            ring.current(now).backlog = Some(backlog.get(target).copied().unwrap_or(0));
        }
    }

    /// The last `minutes` minutes up to the one of `now` (at most [`HISTORY_MINUTES`]), oldest
    /// first, one point per minute (zero counts where nothing happened).
    pub fn series(&self, minutes: usize, now: Millis) -> Series {
        let minutes = minutes.clamp(1, HISTORY_MINUTES) as Millis;
        let last = now - now.rem_euclid(BUCKET_MS);
        let first = last - (minutes - 1) * BUCKET_MS;
        let rings = self.rings.lock().unwrap_or_else(|e| e.into_inner());
        let mut all = Vec::with_capacity(minutes as usize);
        let mut targets: BTreeMap<String, Vec<Point>> = rings
            .keys()
            .map(|t| (t.clone(), Vec::with_capacity(minutes as usize)))
            .collect();
        for k in 0..minutes {
            let minute = first + k * BUCKET_MS;
            let mut merged = Bucket::fresh(minute);
            let mut any_backlog = false;
            for (target, ring) in rings.iter() {
                let b = ring.at(minute).copied().unwrap_or_else(|| Bucket::fresh(minute));
                merged.delivered += b.delivered;
                merged.retried += b.retried;
                merged.failed += b.failed;
                for (m, n) in merged.latency.iter_mut().zip(b.latency) {
                    *m = m.saturating_add(n);
                }
                if let Some(n) = b.backlog {
                    any_backlog = true;
                    merged.backlog = Some(merged.backlog.unwrap_or(0) + n);
                }
                if let Some(points) = targets.get_mut(target) {
                    points.push(point(&b));
                }
            }
            if !any_backlog {
                merged.backlog = None;
            }
            all.push(point(&merged));
        }
        Series { all, targets }
    }
}

fn point(b: &Bucket) -> Point {
    Point {
        minute: b.minute,
        delivered: u64::from(b.delivered),
        retried: u64::from(b.retried),
        failed: u64::from(b.failed),
        p50_ms: quantile(&b.latency, 0.5),
        p99_ms: quantile(&b.latency, 0.99),
        backlog: b.backlog,
    }
}

static HISTORY: LazyLock<History> = LazyLock::new(History::default);

/// Records one finished attempt of `target` (the dispatcher calls it with the attempt's
/// outcome and the status it left the delivery in).
pub fn attempt_ended(target: &str, outcome: AttemptOutcome, status: DeliveryStatus, took: Duration) {
    if let Some(ended) = Ended::of(outcome, status) {
        HISTORY.record(target, ended, took, now_ms());
    }
}

/// Records the backlog of every target, as sampled now.
pub fn backlog_sampled(backlog: &BTreeMap<String, u64>) {
    HISTORY.sample_backlog(backlog, now_ms());
}

/// The last `minutes` minutes of history in this process.
pub fn recent(minutes: usize) -> Series {
    HISTORY.series(minutes, now_ms())
}

#[cfg(test)]
mod tests {
    use super::*;

    const T0: Millis = 29_000_000 * BUCKET_MS;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn attempts_are_counted_in_the_minute_they_end() {
        let h = History::default();
        h.record("crm", Ended::Delivered, ms(10), T0);
        h.record("crm", Ended::Delivered, ms(10), T0 + 59_999);
        h.record("crm", Ended::Retried, ms(10), T0 + 60_000);
        h.record("crm", Ended::Failed, ms(10), T0 + 60_001);
        let s = h.series(3, T0 + 60_500);
        let crm = &s.targets["crm"];
        assert_eq!(crm.len(), 3);
        assert_eq!(crm[0].minute, T0 - BUCKET_MS);
        assert_eq!((crm[0].delivered, crm[0].p50_ms), (0, None));
        assert_eq!((crm[1].delivered, crm[1].retried, crm[1].failed), (2, 0, 0));
        assert_eq!((crm[2].delivered, crm[2].retried, crm[2].failed), (0, 1, 1));
        assert_eq!(s.all[1].delivered, 2);
    }

    #[test]
    fn a_quiet_gap_shows_as_zero_and_the_ring_forgets_what_is_older_than_its_hours() {
        let h = History::default();
        h.record("crm", Ended::Delivered, ms(5), T0);
        // Ten quiet minutes, then one more attempt.
        h.record("crm", Ended::Delivered, ms(5), T0 + 10 * BUCKET_MS);
        let s = h.series(11, T0 + 10 * BUCKET_MS);
        let counts: Vec<u64> = s.targets["crm"].iter().map(|p| p.delivered).collect();
        assert_eq!(counts, [1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1]);

        // The slot of T0 is reused exactly HISTORY_MINUTES later: the old count is gone, not added.
        let wrapped = T0 + HISTORY_MINUTES as Millis * BUCKET_MS;
        h.record("crm", Ended::Failed, ms(5), wrapped);
        let s = h.series(HISTORY_MINUTES, wrapped);
        let crm = &s.targets["crm"];
        assert_eq!(crm.len(), HISTORY_MINUTES);
        assert_eq!(crm[0].minute, T0 + BUCKET_MS);
        let last = crm.last().unwrap();
        assert_eq!((last.delivered, last.failed), (0, 1));
        assert_eq!(
            crm.iter().map(|p| p.delivered).sum::<u64>(),
            1,
            "only the attempt at T0+10 min is left"
        );
        // Asking beyond the ring is the ring.
        assert_eq!(h.series(100_000, wrapped).all.len(), HISTORY_MINUTES);
    }

    #[test]
    fn latency_quantiles_are_within_the_buckets_width() {
        let h = History::default();
        for i in 1..=100 {
            // 1..=99 ms, and one slow attempt of 3 s.
            let took = if i == 100 { ms(3000) } else { ms(i) };
            h.record("crm", Ended::Delivered, took, T0);
        }
        let p = &h.series(1, T0).targets["crm"][0];
        let (p50, p99) = (p.p50_ms.unwrap(), p.p99_ms.unwrap());
        assert!((50.0 * 0.87..=50.0 * 1.15).contains(&p50), "p50 {p50}");
        assert!((99.0 * 0.87..=99.0 * 1.15).contains(&p99), "p99 {p99}");
        // The slowest is the 100th percentile, not the 99th.
        assert!(p99 < 200.0, "p99 {p99}");
        // Below the floor and beyond the last bucket are kept at the ends, not lost.
        assert_eq!(latency_index(Duration::from_micros(1)), 0);
        assert_eq!(latency_index(Duration::from_secs(3600)), LATENCY_BUCKETS - 1);
    }

    #[test]
    fn all_targets_merge_counts_latency_and_backlog() {
        let h = History::default();
        h.record("crm", Ended::Delivered, ms(2), T0);
        h.record("billing", Ended::Delivered, ms(800), T0);
        h.record("billing", Ended::Retried, ms(800), T0);
        h.sample_backlog(&BTreeMap::from([("crm".into(), 7), ("billing".into(), 3)]), T0 + 10);
        // A later sample in the same minute replaces the earlier; a target not named has none.
        h.sample_backlog(&BTreeMap::from([("crm".into(), 5)]), T0 + 20_000);
        let s = h.series(1, T0);
        assert_eq!(s.all[0].delivered, 2);
        assert_eq!(s.all[0].retried, 1);
        assert_eq!(s.all[0].backlog, Some(5));
        assert_eq!(s.targets["crm"][0].backlog, Some(5));
        assert_eq!(s.targets["billing"][0].backlog, Some(0));
        // Two of three attempts took 800 ms: the merged median is there.
        assert!(s.all[0].p50_ms.unwrap() > 600.0, "{:?}", s.all[0]);
        // A minute never sampled has no backlog, which is not zero.
        assert_eq!(h.series(2, T0 + BUCKET_MS).all[1].backlog, None);
    }

    #[test]
    fn outcomes_count_by_what_happened_to_the_delivery() {
        use AttemptOutcome::*;
        assert_eq!(Ended::of(Delivered, DeliveryStatus::Delivered), Some(Ended::Delivered));
        assert_eq!(Ended::of(Retry, DeliveryStatus::Pending), Some(Ended::Retried));
        assert_eq!(Ended::of(Retry, DeliveryStatus::Paused), Some(Ended::Retried));
        assert_eq!(Ended::of(Retry, DeliveryStatus::Dead), Some(Ended::Failed));
        assert_eq!(Ended::of(Permanent, DeliveryStatus::Discarded), Some(Ended::Failed));
        assert_eq!(Ended::of(Abandoned, DeliveryStatus::Pending), None);
    }
}
