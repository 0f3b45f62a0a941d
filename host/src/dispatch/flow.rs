//! Flow control of each target, in memory: the limit in force on its attempts (learned by a
//! `policy::adaptive::Controller`, or the manifest's `concurrency` when fixed), the gate
//! that enforces it on the lane, the pace of a receiver that limits its rate (learned by a
//! `policy::pace::Pacer`, enforced by a token bucket the lane takes from), and the retry
//! budget. Driven by the lane (which passes the gate, takes the pace's tokens and asks the
//! budget) and the attempt (which reports how each call went); shown by the API and the
//! metrics. Like breakers, flows outlive reloads of their target: a new version
//! of a manifest keeps what was learned about its receiver.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;

use crate::domain::TargetName;
use crate::policy::adaptive::{Answer, Cause, Change, ConcurrencyMode, Controller};
use crate::policy::budget::{BudgetStatus, RetryBudget};
use crate::policy::pace::{PaceChange, Pacer};
use crate::targets::manifest::TargetSpec;
use crate::telemetry::metrics;

use super::ratelimit::TokenBucket;

/// The pace's burst: the attempts of this long at its rate (at least one), so that a lane
/// that waited a moment for a token catches up, without a burst the receiver would refuse.
const PACE_BURST: Duration = Duration::from_millis(20);
/// What a lane reads ahead may last this long at the receiver's unloaded pace (see
/// [`Flow::read_ahead`]).
const READ_AHEAD_SPAN: Duration = Duration::from_millis(50);

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// A semaphore whose size can shrink while permits are out: what is taken back is kept as a
/// debt and paid by permits as they come back.
#[derive(Debug)]
pub(super) struct Gate {
    permits: Arc<Semaphore>,
    /// (size, permits to forget as they come back).
    size: Mutex<(u32, u32)>,
}

/// A permit of a [`Gate`]: returned (or forgotten, to pay a shrink) on drop.
#[derive(Debug)]
pub(super) struct GatePermit {
    permit: Option<OwnedSemaphorePermit>,
    gate: Arc<Gate>,
}

impl Drop for GatePermit {
    fn drop(&mut self) {
        let Some(permit) = self.permit.take() else { return };
        let mut size = lock(&self.gate.size);
        if size.1 > 0 {
            size.1 -= 1;
            permit.forget();
        }
    }
}

impl Gate {
    fn new(size: u32) -> Arc<Self> {
        Arc::new(Self {
            permits: Arc::new(Semaphore::new(size as usize)),
            size: Mutex::new((size, 0)),
        })
    }

    /// Waits for a permit; `None` only if the gate was closed (never, while the flow lives).
    pub(super) async fn acquire(self: &Arc<Self>) -> Option<GatePermit> {
        let permit = Arc::clone(&self.permits).acquire_owned().await.ok()?;
        Some(GatePermit {
            permit: Some(permit),
            gate: Arc::clone(self),
        })
    }

    /// A permit if one is free now.
    pub(super) fn try_acquire(self: &Arc<Self>) -> Option<GatePermit> {
        let permit = Arc::clone(&self.permits).try_acquire_owned().ok()?;
        Some(GatePermit {
            permit: Some(permit),
            gate: Arc::clone(self),
        })
    }

    fn resize(&self, to: u32) {
        let mut size = lock(&self.size);
        let (from, debt) = *size;
        if to > from {
            let grow = to - from;
            let repaid = grow.min(debt);
            self.permits.add_permits((grow - repaid) as usize);
            *size = (to, debt - repaid);
        } else if to < from {
            let shrink = from - to;
            let forgotten = self.permits.forget_permits(shrink as usize) as u32;
            *size = (to, debt + shrink - forgotten);
        }
    }
}

/// What `GET /v1/targets` and the metrics show of a target's flow.
#[derive(Debug, Clone, PartialEq)]
pub struct FlowStatus {
    pub mode: ConcurrencyMode,
    /// Attempts that may run at once now.
    pub limit: u32,
    /// The manifest's `concurrency`.
    pub ceiling: u32,
    /// The receiver's unloaded round trip, as learned (adaptive only).
    pub baseline: Option<Duration>,
    /// Refusals seen (429, 503, refused connections, timeouts) since the start.
    pub refusals: u64,
    /// The pace in force, attempts a second, while the receiver limits its rate (adaptive
    /// only).
    pub pace: Option<f64>,
    /// The retry budget, if the target has one: whether it holds retries back now (the
    /// receiver is under pressure), and its window.
    pub budget: Option<(bool, BudgetStatus)>,
}

/// Whether the last logged limit was a drop to half or less, for "recovered" lines.
#[derive(Debug, Clone, Copy)]
struct Told {
    /// The highest limit since the last line.
    high: u32,
    /// The limit that the last "halved" line reported, until it recovers.
    low: Option<u32>,
}

#[derive(Debug)]
struct State {
    mode: ConcurrencyMode,
    controller: Controller,
    pacer: Pacer,
    /// The pace's tokens, while pacing.
    paced: Option<TokenBucket>,
    budget: Option<RetryBudget>,
    refusals: u64,
    told: Told,
}

/// One target's flow control.
#[derive(Debug)]
pub struct Flow {
    target: TargetName,
    gate: Arc<Gate>,
    state: Mutex<State>,
}

impl Flow {
    fn new(spec: &TargetSpec) -> Self {
        let controller = Controller::new(spec.concurrency, Instant::now());
        let limit = match spec.concurrency_mode {
            ConcurrencyMode::Adaptive => controller.limit(),
            ConcurrencyMode::Fixed => spec.concurrency,
        };
        Self {
            target: spec.name.clone(),
            gate: Gate::new(limit),
            state: Mutex::new(State {
                mode: spec.concurrency_mode,
                controller,
                pacer: Pacer::new(),
                paced: None,
                budget: spec.retry_budget.map(RetryBudget::new),
                refusals: 0,
                told: Told { high: limit, low: None },
            }),
        }
    }

    /// Takes a manifest's new settings.
    fn reconfigure(&self, spec: &TargetSpec) {
        let mut s = lock(&self.state);
        s.mode = spec.concurrency_mode;
        s.controller.set_ceiling(spec.concurrency);
        match (&mut s.budget, spec.retry_budget) {
            (Some(b), Some(c)) => b.reconfigure(c),
            (b, c) => *b = c.map(RetryBudget::new),
        }
        self.gate.resize(Self::limit_of(&s));
    }

    /// Attempts a second the receiver can take, as learned: the pace, or the limit over its
    /// unloaded round trip (0 before one is known).
    fn capacity_of(s: &State) -> f64 {
        if let Some(rate) = Self::pace_of(s) {
            return rate;
        }
        s.controller
            .baseline()
            .filter(|b| !b.is_zero())
            .map_or(0.0, |b| f64::from(Self::limit_of(s)) / b.as_secs_f64())
    }

    fn pace_of(s: &State) -> Option<f64> {
        match s.mode {
            ConcurrencyMode::Adaptive => s.pacer.rate(),
            ConcurrencyMode::Fixed => None,
        }
    }

    /// Takes up to `want` of the pace's tokens, one per attempt: `Ok(granted)` with at least
    /// one (all of them while not pacing), or `Err(wait)` until one is due.
    pub(super) fn pace(&self, want: usize, now: Instant) -> Result<usize, Duration> {
        let mut guard = lock(&self.state);
        let s = &mut *guard;
        Self::tell_pace(&self.target, s.pacer.tick(now));
        let Some(rate) = Self::pace_of(s) else {
            s.paced = None;
            return Ok(want);
        };
        let burst = (rate * PACE_BURST.as_secs_f64()).max(1.0);
        let bucket = s.paced.get_or_insert_with(|| TokenBucket::empty(rate, burst, now));
        bucket.set_rate(rate, burst, now);
        match bucket.take(want, now) {
            0 => Err(bucket.wait_for_one(now)),
            n => Ok(n),
        }
    }

    /// Logs a change of the pace: when it starts and ends, not per cut.
    fn tell_pace(target: &TargetName, change: Option<PaceChange>) {
        match change {
            Some(PaceChange::Engaged { rate }) => tracing::warn!(
                target = %target, per_sec = format_args!("{rate:.1}"),
                "the receiver limits its rate (429): attempts paced"
            ),
            Some(PaceChange::Lowered { from, to }) => tracing::debug!(
                target = %target, from = format_args!("{from:.1}"), to = format_args!("{to:.1}"),
                "pace lowered"
            ),
            Some(PaceChange::Released) => tracing::info!(
                target = %target,
                "the receiver no longer limits the rate: attempts no longer paced"
            ),
            Some(PaceChange::Pause(_)) | None => {}
        }
    }

    /// Gives back tokens of the pace taken but not used.
    pub(super) fn give_back_pace(&self, n: usize) {
        if let Some(bucket) = lock(&self.state).paced.as_mut() {
            bucket.give_back(n);
        }
    }

    /// Whether the target is paced now (its read-ahead waits for tokens, not permits).
    pub(super) fn paced(&self) -> bool {
        Self::pace_of(&lock(&self.state)).is_some()
    }

    /// Whether the receiver shows pressure: the limit below its ceiling, or a pace in force.
    fn under_pressure(s: &State) -> bool {
        Self::limit_of(s) < s.controller.ceiling() || Self::pace_of(s).is_some()
    }

    fn limit_of(s: &State) -> u32 {
        match s.mode {
            ConcurrencyMode::Adaptive => s.controller.limit(),
            ConcurrencyMode::Fixed => s.controller.ceiling(),
        }
    }

    /// How many deliveries a lane that reads ahead `times` concurrencies claims beyond its
    /// free permits: `times` the limit, or as many as the limit gets through in
    /// [`READ_AHEAD_SPAN`] at the receiver's unloaded round trip if that is more, and never more
    /// than `times` the ceiling. A cut limit shrinks the read-ahead of a slow receiver (what it
    /// holds leased waits about `times` round trips, as at its ceiling) but not of a fast one:
    /// a receiver that answers in a few ms and whose limit was cut for latency (on a busy
    /// machine, the host's own CPU) would else be claimed from in small batches, each a
    /// transaction of its own, just when the machine has the least to spare.
    pub(super) fn read_ahead(&self, times: usize) -> usize {
        let s = lock(&self.state);
        let limit = Self::limit_of(&s) as usize;
        let by_limit = times * limit;
        let Some(baseline) = s.controller.baseline().filter(|b| !b.is_zero()) else {
            return by_limit;
        };
        let by_time = (limit as f64 * READ_AHEAD_SPAN.as_secs_f64() / baseline.as_secs_f64()) as usize;
        by_limit.max(by_time.min(times * s.controller.ceiling() as usize))
    }

    /// The gate the lane passes for every attempt.
    pub(super) fn gate(&self) -> &Arc<Gate> {
        &self.gate
    }

    /// Attempts that may run at once now.
    pub fn limit(&self) -> u32 {
        Self::limit_of(&lock(&self.state))
    }

    /// Whether a retry may start now: always while the receiver is not under pressure (the
    /// limit at its ceiling, `breaker_closed`), else as the budget allows. A first attempt is
    /// counted with `retry` false.
    pub(super) fn admit(&self, retry: bool, breaker_closed: bool, now: Instant) -> Result<(), Duration> {
        let mut s = lock(&self.state);
        let pressure = !breaker_closed || Self::under_pressure(&s);
        let capacity = Self::capacity_of(&s);
        let Some(budget) = s.budget.as_mut() else { return Ok(()) };
        if !retry {
            budget.first_attempt(now);
        } else if !pressure {
            budget.retry(now);
        } else if !budget.try_retry(now, capacity) {
            let wait = budget.wait(now);
            drop(s);
            metrics::retry_held(self.target.as_str());
            return Err(wait);
        }
        Ok(())
    }

    /// An attempt started.
    pub(super) fn started(&self) {
        lock(&self.state).controller.started();
    }

    /// An attempt ended with `answer`: the controller and the pacer learn from it and the
    /// gate follows the limit. Returns a pause of the whole target when the receiver refuses
    /// even one attempt at a time, or takes nothing at any pace.
    pub(super) fn finished(&self, answer: Answer, now: Instant) -> Option<Duration> {
        let refused = matches!(answer, Answer::Refused(_) | Answer::Limited(_));
        if refused {
            metrics::refusal(self.target.as_str());
        }
        let mut s = lock(&self.state);
        if refused {
            s.refusals += 1;
        }
        let change = s.controller.finished(answer, now);
        let paced = s.pacer.finished(answer, now);
        if s.mode == ConcurrencyMode::Fixed {
            return None;
        }
        // The limit's change is applied whatever the pace says: a window can close on a 429.
        let pace_pause = match paced {
            Some(PaceChange::Pause(pause)) => Some(pause),
            other => {
                Self::tell_pace(&self.target, other);
                None
            }
        };
        let Some(change) = change else { return pace_pause };
        match change {
            Change::Pause(pause) => Some(pause),
            Change::Decreased { from, to, cause } => {
                self.gate.resize(to);
                if to * 2 <= s.told.high {
                    tracing::warn!(
                        target = %self.target, from = s.told.high, to, cause = cause.as_str(),
                        "the receiver is overloaded: concurrency limit halved"
                    );
                    s.told = Told {
                        high: to,
                        low: Some(to),
                    };
                } else if cause == Cause::Latency || from > to {
                    tracing::debug!(target = %self.target, from, to, cause = cause.as_str(), "concurrency limit lowered");
                }
                pace_pause
            }
            Change::Increased { to, .. } => {
                self.gate.resize(to);
                s.told.high = s.told.high.max(to);
                if let Some(low) = s.told.low
                    && (to >= low * 2 || to >= s.controller.ceiling())
                {
                    tracing::info!(target = %self.target, from = low, to, "the receiver recovered: concurrency limit back up");
                    s.told = Told { high: to, low: None };
                }
                pace_pause
            }
        }
    }

    pub(super) fn status(&self) -> FlowStatus {
        let mut s = lock(&self.state);
        let now = Instant::now();
        Self::tell_pace(&self.target, s.pacer.tick(now));
        let limit = Self::limit_of(&s);
        let pressure = Self::under_pressure(&s);
        FlowStatus {
            mode: s.mode,
            limit,
            ceiling: s.controller.ceiling(),
            baseline: s.controller.baseline(),
            refusals: s.refusals,
            pace: Self::pace_of(&s),
            budget: {
                let capacity = Self::capacity_of(&s);
                s.budget.as_mut().map(|b| (pressure, b.status(now, capacity)))
            },
        }
    }
}

/// The flows of every target, shared by the dispatcher and the API.
#[derive(Debug, Default)]
pub struct Flows {
    map: Mutex<HashMap<TargetName, Arc<Flow>>>,
}

impl Flows {
    /// The flow of `spec`'s target, created, or updated to this version of its manifest.
    pub(super) fn get(&self, spec: &TargetSpec) -> Arc<Flow> {
        let mut map = lock(&self.map);
        if let Some(flow) = map.get(&spec.name) {
            flow.reconfigure(spec);
            return Arc::clone(flow);
        }
        let flow = Arc::new(Flow::new(spec));
        map.insert(spec.name.clone(), Arc::clone(&flow));
        flow
    }

    /// `target`'s flow, as the API shows it, if it has one.
    pub fn status(&self, target: &str) -> Option<FlowStatus> {
        let flow = lock(&self.map)
            .iter()
            .find(|(n, _)| n.as_str() == target)
            .map(|(_, f)| Arc::clone(f));
        flow.map(|f| f.status())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dispatch::testing::spec;
    use crate::policy::adaptive::Answer;

    const RTT: Duration = Duration::from_millis(20);

    /// Drives `flow` until its limit is at its ceiling, on tokio's paused clock.
    async fn grow(flows: &[&Flow]) -> Instant {
        for _ in 0..20 {
            let limits: Vec<u32> = flows.iter().map(|f| f.limit()).collect();
            for (flow, limit) in flows.iter().zip(&limits) {
                (0..*limit).for_each(|_| flow.started());
            }
            tokio::time::advance(RTT).await;
            for (flow, limit) in flows.iter().zip(&limits) {
                for _ in 0..*limit {
                    let _ = flow.finished(Answer::Accepted(RTT), Instant::now());
                }
            }
        }
        Instant::now()
    }

    #[tokio::test(start_paused = true)]
    async fn the_budget_holds_retries_only_while_the_receiver_is_under_pressure() {
        let flow = Flow::new(&spec(
            "crm",
            "concurrency = 4\n[retry_budget]\nmin_per_sec = 0\nratio = 0",
        ));
        let now = grow(&[&flow]).await;
        assert_eq!(flow.limit(), 4);
        for _ in 0..4 {
            flow.admit(false, true, now).unwrap();
        }
        // At the ceiling with the breaker closed: no pressure, retries go whatever the budget.
        for _ in 0..10 {
            assert!(flow.admit(true, true, now).is_ok());
        }
        // The breaker not closed is pressure: the window is already over its budget.
        assert!(flow.admit(true, false, now).is_err());
        let status = flow.status();
        let (engaged, budget) = status.budget.unwrap();
        assert!(!engaged, "the limit is at its ceiling");
        assert_eq!((budget.first_attempts, budget.retries, budget.held), (4, 10, 1));
    }

    #[tokio::test(start_paused = true)]
    async fn a_refusal_burst_lowers_the_gate_and_a_fixed_flow_never_moves() {
        let adaptive = Flow::new(&spec("a", "concurrency = 8"));
        let fixed = Flow::new(&spec("f", "concurrency = 8\nconcurrency_mode = \"fixed\""));
        let now = grow(&[&adaptive, &fixed]).await;
        assert_eq!((adaptive.limit(), fixed.limit()), (8, 8));
        // Six attempts running, and then half of the last answers refused: a burst.
        for flow in [&adaptive, &fixed] {
            for _ in 0..6 {
                flow.started();
            }
            for _ in 0..10 {
                flow.started();
                flow.finished(Answer::Refused(Some(Duration::from_secs(1))), now);
            }
        }
        assert_eq!(adaptive.limit(), 4, "the first cut ends the slow start: halved");
        assert_eq!(fixed.limit(), 8);
        assert_eq!(fixed.status().refusals, 10, "refusals are counted in both modes");
        let permits: Vec<_> = std::iter::from_fn(|| adaptive.gate().try_acquire()).collect();
        assert_eq!(permits.len(), 4, "the gate follows the limit");
    }

    #[tokio::test(start_paused = true)]
    async fn a_burst_of_429s_paces_the_target_and_leaves_its_limit_alone() {
        let adaptive = Flow::new(&spec("a", "concurrency = 8"));
        let fixed = Flow::new(&spec("f", "concurrency = 8\nconcurrency_mode = \"fixed\""));
        let now = grow(&[&adaptive, &fixed]).await;
        // About 400 taken a second (8 every 20 ms); then the receiver's bucket is empty.
        for flow in [&adaptive, &fixed] {
            assert_eq!(flow.pace(100, now), Ok(100), "not paced yet");
            for _ in 0..10 {
                flow.started();
                assert_eq!(flow.finished(Answer::Limited(Some(Duration::from_secs(1))), now), None);
            }
        }
        assert_eq!(adaptive.limit(), 8, "a rate limit is no reason to run fewer at once");
        let pace = adaptive.status().pace.expect("paced");
        // An eighth of what it took over the last two round trips (eight at once), then slow
        // start.
        assert!((30.0..=100.0).contains(&pace), "{pace}");
        // The pace starts empty (its burst would go to a receiver that just refused), then
        // holds at most 20 ms of its rate.
        let wait = adaptive.pace(1, now).expect_err("empty");
        assert!(wait <= Duration::from_secs_f64(1.0 / pace), "{wait:?}");
        tokio::time::advance(Duration::from_millis(30)).await;
        let now = Instant::now();
        let burst = adaptive.pace(100, now).expect("a full bucket");
        let most = (pace * 1.1 * PACE_BURST.as_secs_f64()).ceil() as usize;
        assert!((2..=most).contains(&burst), "{burst} of at most {most}");
        let wait = adaptive.pace(1, now).expect_err("empty");
        assert!(wait <= Duration::from_secs_f64(1.0 / pace), "{wait:?}");
        adaptive.give_back_pace(1);
        assert_eq!(adaptive.pace(5, now), Ok(1), "what was given back is taken again");
        // Under a pace the receiver is under pressure: the budget holds retries.
        assert!(adaptive.status().budget.is_none_or(|(engaged, _)| engaged));
        // A fixed flow keeps today's behaviour: no pace.
        assert_eq!(fixed.status().pace, None);
        assert_eq!(fixed.pace(100, now), Ok(100));
    }

    /// Round trips of `rtt` at the flow's limit, `rounds` times, on the paused clock.
    async fn drive(flow: &Flow, rtt: Duration, rounds: usize) {
        for _ in 0..rounds {
            let limit = flow.limit();
            (0..limit).for_each(|_| flow.started());
            tokio::time::advance(rtt).await;
            for _ in 0..limit {
                let _ = flow.finished(Answer::Accepted(rtt), Instant::now());
            }
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_fast_receiver_keeps_its_read_ahead_when_its_limit_is_cut_and_a_slow_one_does_not() {
        let fast = Flow::new(&spec("fast", "concurrency = 16"));
        let slow = Flow::new(&spec("slow", "concurrency = 16"));
        assert_eq!(
            fast.read_ahead(2),
            fast.limit() as usize * 2,
            "no round trip known yet: by the limit"
        );
        // Unloaded round trips learned at the ceiling: 20 ms and 400 ms.
        drive(&fast, RTT, 20).await;
        drive(&slow, Duration::from_millis(400), 20).await;
        assert_eq!((fast.limit(), slow.limit()), (16, 16));
        assert_eq!(fast.read_ahead(2), 32);
        assert_eq!(slow.read_ahead(2), 32, "at its ceiling, by the limit");
        // Both answer four times slower: latency cuts.
        drive(&fast, RTT * 4, 3).await;
        drive(&slow, Duration::from_millis(1600), 3).await;
        let (f, s) = (fast.limit() as usize, slow.limit() as usize);
        assert!(f < 16 && s < 16, "both cut: {f}, {s}");
        assert!(f * 50 / 20 > 2 * f, "{f}");
        assert_eq!(
            fast.read_ahead(2),
            (f * 50 / 20).min(32),
            "what the cut limit gets through in 50 ms at 20 ms a round trip"
        );
        assert_eq!(
            slow.read_ahead(2),
            2 * s,
            "a slow receiver's read-ahead follows its limit"
        );
        let fixed = Flow::new(&spec("f", "concurrency = 8\nconcurrency_mode = \"fixed\""));
        assert_eq!(
            fixed.read_ahead(2),
            16,
            "a fixed target: twice its concurrency, as ever"
        );
        assert_eq!(fast.read_ahead(0), 0, "a lane that does not read ahead");
    }

    #[tokio::test]
    async fn a_gate_shrinks_while_its_permits_are_out_and_grows_again() {
        let gate = Gate::new(4);
        let held: Vec<_> = (0..4).map(|_| gate.try_acquire().unwrap()).collect();
        gate.resize(2);
        drop(held);
        let again: Vec<_> = std::iter::from_fn(|| gate.try_acquire()).collect();
        assert_eq!(again.len(), 2, "two returned permits paid the shrink");
        gate.resize(3);
        assert!(gate.try_acquire().is_some(), "grown by one");
        drop(again);
        gate.resize(1);
        let one: Vec<_> = std::iter::from_fn(|| gate.try_acquire()).collect();
        assert_eq!(one.len(), 1);
    }
}
