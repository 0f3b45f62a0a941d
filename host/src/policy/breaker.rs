//! The circuit breaker of one target, and the target-wide pause a receiver's backpressure
//! asks for.
//!
//! The breaker opens on a **failure rate over a sliding window with a minimum volume**: it
//! remembers the outcomes of the last `window` attempts (none older than `window_ms`) and
//! opens when at least `min_attempts` of them are known and at least `failure_rate` of those
//! failed. A target that answers most requests therefore keeps flowing (its retry schedule
//! handles the rest), while one that fails nearly everything stops being hammered. An open
//! breaker claims nothing (deliveries stay pending, no attempts are burned); after `cooldown`
//! it goes half-open and lets probes through one at a time, closing after `probes`
//! successes in a row and reopening on any failure, so a dead target sees at most one
//! attempt per cool-down.
//!
//! **Backpressure is not failure.** An attempt whose retry carries a requested delay (the
//! plugin's `after-ms`, which the SDK sets from a 429's or 503's `Retry-After`) pauses the
//! whole target until that delay has passed, and does not count towards opening.
//!
//! A pure state machine: callers pass the time in.

use std::collections::VecDeque;
use std::time::Duration;

use tokio::time::Instant;

use crate::domain::Outcome;

/// When a breaker opens and how it recovers.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BreakerConfig {
    /// Whether the breaker may open at all (backpressure pauses apply regardless).
    pub enabled: bool,
    /// Fraction of the remembered attempts (0 < rate ≤ 1) that must have failed to open.
    pub failure_rate: f64,
    /// How many of the most recent attempts are remembered.
    pub window: u32,
    /// Outcomes older than this are forgotten.
    pub window_age: Duration,
    /// The fewest remembered attempts on which the breaker may open (the minimum volume).
    pub min_attempts: u32,
    /// How long it stays open before probing.
    pub cooldown: Duration,
    /// Successful probes in a row that close a half-open breaker.
    pub probes: u32,
    /// Whether a requested delay (`Retry-After`) pauses the whole target (`true`), or only
    /// the delivery that got it (`false`: for receivers whose limits are per resource).
    pub pause_target: bool,
}

/// The defaults (half of the last 100 attempts, once at least 40 are known) are chosen so
/// that a target failing a quarter of its requests at random practically never opens: 20 or
/// more failures among 40 attempts at a 25 % rate has a probability of about 6e-4, 50 among
/// 100 below 1e-7 (10 among 20, the first choice, about 1.4 %: it opened flaky targets). A dead target opens after 40 attempts, which at
/// any real load takes seconds.
impl Default for BreakerConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            failure_rate: 0.5,
            window: 100,
            window_age: Duration::from_secs(60),
            min_attempts: 40,
            cooldown: Duration::from_secs(30),
            probes: 3,
            pause_target: true,
        }
    }
}

impl BreakerConfig {
    /// The meaning of the former `failures = N` key: N failures in a row, i.e. every one of
    /// the last N attempts failed (`0` disables the breaker).
    pub fn consecutive(failures: u32, cooldown: Duration) -> Self {
        Self {
            enabled: failures > 0,
            failure_rate: 1.0,
            window: failures.max(1),
            min_attempts: failures.max(1),
            cooldown,
            probes: 1,
            ..Self::default()
        }
    }
}

/// Where a breaker stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BreakerState {
    Closed,
    Open {
        until: Instant,
    },
    /// Probing: `probing` while a probe runs, `passed` probes have succeeded so far.
    HalfOpen {
        probing: bool,
        passed: u32,
    },
}

impl BreakerState {
    /// The state's name as the API shows it.
    pub fn as_str(&self) -> &'static str {
        match self {
            BreakerState::Closed => "closed",
            BreakerState::Open { .. } => "open",
            BreakerState::HalfOpen { .. } => "half_open",
        }
    }
}

/// What a lane may claim now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admit {
    /// Claim as much as concurrency allows.
    Any,
    /// Claim exactly one delivery: the probe.
    Probe,
    /// Claim nothing before this instant (an open breaker, or a backpressure pause).
    WaitUntil(Instant),
    /// A probe is running: claim nothing until its outcome is recorded.
    Hold,
}

/// What one call to a target says about its health.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Signal {
    /// The target accepted (something): a sign of health.
    Success,
    /// A retryable failure without a requested delay.
    Failure,
    /// The receiver asked to be left alone for this long (429/503 with `Retry-After`):
    /// neither success nor failure; the whole target pauses.
    Backpressure(Duration),
}

impl Signal {
    /// What a call's outcomes (one, or a batch's) say, if anything: a requested delay wins
    /// (the receiver asked everyone to slow down), then any success, then any retryable
    /// failure. A retry is backpressure exactly when it carries `after` (the plugin's
    /// `after-ms`). Permanent failures say nothing about the target's health. The pause is
    /// capped at `max_pause` (the target's `max_backoff_ms`).
    pub fn of_call(outcomes: &[Outcome], max_pause: Duration) -> Option<Signal> {
        let pause = outcomes
            .iter()
            .filter_map(|o| match o {
                Outcome::Retry { after: Some(a), .. } => Some(*a),
                _ => None,
            })
            .max();
        if let Some(p) = pause {
            Some(Signal::Backpressure(p.min(max_pause)))
        } else if outcomes.contains(&Outcome::Delivered) {
            Some(Signal::Success)
        } else if outcomes.iter().any(|o| matches!(o, Outcome::Retry { .. })) {
            Some(Signal::Failure)
        } else {
            None
        }
    }
}

/// A change worth telling the operator about.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Transition {
    Opened {
        /// Failures among the remembered attempts.
        failures: u32,
        /// Remembered attempts.
        attempts: u32,
    },
    /// Closed again after being open; `failures` counts the failures since it first opened.
    Recovered { failures: u32 },
    /// A receiver asked for a pause: nothing is claimed until it is over.
    Paused { until: Instant, pause: Duration },
}

/// What the API shows of a breaker.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BreakerStatus {
    pub state: &'static str,
    pub consecutive_failures: u32,
    /// Failures and attempts in the window.
    pub window_failures: u32,
    pub window_attempts: u32,
    /// How long the target is still paused by backpressure.
    pub paused_for: Option<Duration>,
}

/// One target's breaker.
#[derive(Debug, Clone)]
pub struct Breaker {
    config: BreakerConfig,
    state: BreakerState,
    /// The remembered attempts, oldest first: when, and whether it failed.
    window: VecDeque<(Instant, bool)>,
    consecutive: u32,
    failures_while_down: u32,
    /// Backpressure: claim nothing before this.
    paused_until: Option<Instant>,
}

impl Breaker {
    pub fn new(config: BreakerConfig) -> Self {
        Self {
            config,
            state: BreakerState::Closed,
            window: VecDeque::new(),
            consecutive: 0,
            failures_while_down: 0,
            paused_until: None,
        }
    }

    pub fn state(&self) -> BreakerState {
        self.state
    }

    /// Takes a manifest's new settings (after a reload), keeping what the breaker has seen.
    pub fn reconfigure(&mut self, config: BreakerConfig) {
        self.config = config;
    }

    pub fn consecutive_failures(&self) -> u32 {
        self.consecutive
    }

    fn forget_old(&mut self, now: Instant) {
        let window = self.config.window.max(1) as usize;
        while self.window.len() > window {
            self.window.pop_front();
        }
        while self
            .window
            .front()
            .is_some_and(|(at, _)| now.saturating_duration_since(*at) > self.config.window_age)
        {
            self.window.pop_front();
        }
    }

    fn window_counts(&self) -> (u32, u32) {
        let failures = self.window.iter().filter(|(_, failed)| *failed).count() as u32;
        (failures, self.window.len() as u32)
    }

    /// What the API shows at `now`.
    pub fn status(&self, now: Instant) -> BreakerStatus {
        let (window_failures, window_attempts) = self.window_counts();
        BreakerStatus {
            state: self.state.as_str(),
            consecutive_failures: self.consecutive,
            window_failures,
            window_attempts,
            paused_for: self.paused_until.filter(|u| *u > now).map(|u| u - now),
        }
    }

    /// What the lane may claim at `now`; moves an expired open breaker to half-open.
    pub fn admit(&mut self, now: Instant) -> Admit {
        if let Some(until) = self.paused_until {
            if now < until {
                return Admit::WaitUntil(until);
            }
            self.paused_until = None;
        }
        match self.state {
            BreakerState::Closed => Admit::Any,
            BreakerState::Open { until } if now < until => Admit::WaitUntil(until),
            BreakerState::Open { .. } | BreakerState::HalfOpen { probing: false, .. } => Admit::Probe,
            BreakerState::HalfOpen { probing: true, .. } => Admit::Hold,
        }
    }

    /// The lane claimed the probe that [`Admit::Probe`] allowed (`claimed` false: there was
    /// nothing to claim, so no probe runs).
    pub fn probe_started(&mut self, claimed: bool) {
        match self.state {
            BreakerState::Open { .. } => {
                self.state = BreakerState::HalfOpen {
                    probing: claimed,
                    passed: 0,
                }
            }
            BreakerState::HalfOpen { passed, .. } => {
                self.state = BreakerState::HalfOpen {
                    probing: claimed,
                    passed,
                }
            }
            BreakerState::Closed => {}
        }
    }

    fn open(&mut self, now: Instant) {
        self.state = BreakerState::Open {
            until: now + self.config.cooldown,
        };
    }

    /// Pauses the whole target for `pause` whatever `pause_target` says (the adaptive limit
    /// found the receiver refusing even one attempt at a time). A longer pause already running
    /// is kept. Returns whether it paused.
    pub fn pause(&mut self, pause: Duration, now: Instant) -> bool {
        let until = now + pause;
        if self.paused_until.is_some_and(|u| u >= until) || pause.is_zero() {
            return false;
        }
        self.paused_until = Some(until);
        true
    }

    /// Records what a call said about the target.
    pub fn record(&mut self, signal: Signal, now: Instant) -> Option<Transition> {
        let failed = match signal {
            Signal::Backpressure(_) if !self.config.pause_target => return None,
            Signal::Backpressure(pause) => {
                let until = now + pause;
                // A longer pause already running is kept; a late 429 never shortens it.
                if self.paused_until.is_some_and(|u| u >= until) || pause.is_zero() {
                    return None;
                }
                self.paused_until = Some(until);
                // A probe that was told to wait says nothing: let another probe through later.
                if let BreakerState::HalfOpen { passed, .. } = self.state {
                    self.state = BreakerState::HalfOpen { probing: false, passed };
                }
                return Some(Transition::Paused { until, pause });
            }
            Signal::Success => false,
            Signal::Failure => true,
        };
        if !self.config.enabled {
            self.consecutive = if failed { self.consecutive + 1 } else { 0 };
            return None;
        }
        self.window.push_back((now, failed));
        self.forget_old(now);
        if !failed {
            self.consecutive = 0;
            return match self.state {
                BreakerState::Closed => None,
                // A success claimed before the breaker opened: the cool-down stands.
                BreakerState::Open { .. } => None,
                BreakerState::HalfOpen { passed, .. } if passed + 1 < self.config.probes.max(1) => {
                    self.state = BreakerState::HalfOpen {
                        probing: false,
                        passed: passed + 1,
                    };
                    None
                }
                BreakerState::HalfOpen { .. } => {
                    self.state = BreakerState::Closed;
                    // Start afresh: the failures that opened it are history now.
                    self.window.clear();
                    let failures = std::mem::take(&mut self.failures_while_down);
                    Some(Transition::Recovered { failures })
                }
            };
        }
        self.consecutive += 1;
        match self.state {
            BreakerState::Closed => {
                let (failures, attempts) = self.window_counts();
                let volume = attempts >= self.config.min_attempts.max(1);
                if volume && f64::from(failures) >= self.config.failure_rate * f64::from(attempts) {
                    self.failures_while_down = failures;
                    self.open(now);
                    Some(Transition::Opened { failures, attempts })
                } else {
                    None
                }
            }
            BreakerState::HalfOpen { .. } => {
                self.failures_while_down += 1;
                self.open(now);
                let (failures, attempts) = self.window_counts();
                Some(Transition::Opened { failures, attempts })
            }
            // An attempt claimed before the breaker opened failed late: counted, nothing more.
            BreakerState::Open { .. } => {
                self.failures_while_down += 1;
                None
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const COOLDOWN: Duration = Duration::from_secs(10);

    fn rate_breaker() -> Breaker {
        Breaker::new(BreakerConfig {
            cooldown: COOLDOWN,
            ..BreakerConfig::default()
        })
    }

    fn retry(after: Option<u64>) -> Outcome {
        Outcome::Retry {
            reason: "x".into(),
            after: after.map(Duration::from_millis),
        }
    }

    /// A deterministic 25 %-failing sequence: every fourth attempt fails.
    fn quarter_failing(i: u32) -> Signal {
        if i % 4 == 3 { Signal::Failure } else { Signal::Success }
    }

    #[tokio::test(start_paused = true)]
    async fn a_target_failing_a_quarter_of_attempts_never_opens() {
        // The scenario of the issue: with 16 attempts in flight, runs of 5 failures happen all
        // the time at 25 %, and each opened the former consecutive-failures breaker.
        let mut b = rate_breaker();
        for i in 0..10_000u32 {
            let signal = if i % 400 < 5 {
                Signal::Failure
            } else {
                quarter_failing(i)
            };
            assert_eq!(b.record(signal, Instant::now()), None, "attempt {i}");
            assert_eq!(b.admit(Instant::now()), Admit::Any);
            tokio::time::advance(Duration::from_millis(3)).await;
        }
    }

    #[tokio::test(start_paused = true)]
    async fn opens_on_the_rate_only_with_enough_volume() {
        let mut b = rate_breaker();
        // 39 failures: below the minimum volume of 40.
        for _ in 0..39 {
            assert_eq!(b.record(Signal::Failure, Instant::now()), None);
        }
        assert_eq!(
            b.record(Signal::Failure, Instant::now()),
            Some(Transition::Opened {
                failures: 40,
                attempts: 40
            })
        );
        assert!(matches!(b.admit(Instant::now()), Admit::WaitUntil(_)));

        // Half and half over the window opens too (rate 0.5 reached)…
        let mut b = rate_breaker();
        for i in 0..40 {
            let s = if i % 2 == 0 { Signal::Success } else { Signal::Failure };
            let t = b.record(s, Instant::now());
            assert_eq!(t.is_some(), i == 39, "attempt {i}: {t:?}");
        }
        // …49 of every 100 does not, however they bunch up.
        let mut b = rate_breaker();
        for i in 0..1000 {
            let s = if i % 100 < 49 { Signal::Failure } else { Signal::Success };
            if i >= 100 {
                assert_eq!(b.record(s, Instant::now()), None, "attempt {i}");
            } else {
                b.record(s, Instant::now());
            }
        }
    }

    #[tokio::test(start_paused = true)]
    async fn old_outcomes_leave_the_window() {
        let mut b = rate_breaker();
        for _ in 0..35 {
            b.record(Signal::Failure, Instant::now());
        }
        tokio::time::advance(Duration::from_secs(61)).await;
        // The 35 old failures are forgotten: 5 new ones are not enough volume.
        for _ in 0..5 {
            assert_eq!(b.record(Signal::Failure, Instant::now()), None);
        }
        assert_eq!(b.status(Instant::now()).window_attempts, 5);
    }

    #[tokio::test(start_paused = true)]
    async fn a_dead_target_gets_one_probe_per_cooldown_and_closes_after_enough_successes() {
        let mut b = rate_breaker();
        for _ in 0..40 {
            b.record(Signal::Failure, Instant::now());
        }
        let opened = Instant::now();
        let mut probes = Vec::new();
        // A minute of a target that fails every probe: the lane asks every 100 ms.
        for _ in 0..600 {
            if b.admit(Instant::now()) == Admit::Probe {
                b.probe_started(true);
                probes.push(Instant::now() - opened);
                assert_eq!(b.admit(Instant::now()), Admit::Hold, "one probe at a time");
                tokio::time::advance(Duration::from_millis(50)).await;
                assert!(matches!(
                    b.record(Signal::Failure, Instant::now()),
                    Some(Transition::Opened { .. })
                ));
            }
            tokio::time::advance(Duration::from_millis(100)).await;
        }
        assert!(
            (5..=6).contains(&probes.len()),
            "about one probe per 10 s cool-down in 60 s: {probes:?}"
        );
        for pair in probes.windows(2) {
            assert!(pair[1] - pair[0] >= COOLDOWN, "{probes:?}");
        }

        // The target heals: three probes in a row succeed, one at a time, then it closes.
        tokio::time::advance(COOLDOWN).await;
        for n in 0..3 {
            assert_eq!(b.admit(Instant::now()), Admit::Probe, "probe {n}");
            b.probe_started(true);
            assert_eq!(b.admit(Instant::now()), Admit::Hold);
            let t = b.record(Signal::Success, Instant::now());
            if n < 2 {
                assert_eq!(t, None);
                assert_eq!(b.state().as_str(), "half_open");
            } else {
                assert!(matches!(t, Some(Transition::Recovered { failures }) if failures >= 40));
            }
        }
        assert_eq!(b.admit(Instant::now()), Admit::Any);
        assert_eq!(
            b.status(Instant::now()).window_attempts,
            0,
            "a closed breaker starts afresh"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_failed_probe_among_successes_reopens() {
        let mut b = rate_breaker();
        for _ in 0..40 {
            b.record(Signal::Failure, Instant::now());
        }
        tokio::time::advance(COOLDOWN).await;
        assert_eq!(b.admit(Instant::now()), Admit::Probe);
        b.probe_started(true);
        assert_eq!(b.record(Signal::Success, Instant::now()), None);
        assert_eq!(b.admit(Instant::now()), Admit::Probe);
        b.probe_started(true);
        assert!(matches!(
            b.record(Signal::Failure, Instant::now()),
            Some(Transition::Opened { .. })
        ));
        assert!(matches!(b.admit(Instant::now()), Admit::WaitUntil(_)));
    }

    #[tokio::test(start_paused = true)]
    async fn a_probe_with_nothing_to_claim_does_not_block() {
        let mut b = rate_breaker();
        for _ in 0..40 {
            b.record(Signal::Failure, Instant::now());
        }
        tokio::time::advance(COOLDOWN).await;
        assert_eq!(b.admit(Instant::now()), Admit::Probe);
        b.probe_started(false);
        assert_eq!(b.admit(Instant::now()), Admit::Probe, "the next claim is still a probe");
    }

    #[tokio::test(start_paused = true)]
    async fn backpressure_pauses_the_target_and_never_opens_it() {
        let mut b = rate_breaker();
        for _ in 0..100 {
            let t = b.record(Signal::Backpressure(Duration::from_secs(1)), Instant::now());
            assert!(!matches!(t, Some(Transition::Opened { .. })));
        }
        let until = Instant::now() + Duration::from_secs(1);
        assert_eq!(
            b.admit(Instant::now()),
            Admit::WaitUntil(until),
            "the whole target waits"
        );
        assert_eq!(b.status(Instant::now()).window_attempts, 0, "not counted");
        // A shorter request does not shorten the pause.
        assert_eq!(
            b.record(Signal::Backpressure(Duration::from_millis(10)), Instant::now()),
            None
        );
        tokio::time::advance(Duration::from_millis(999)).await;
        assert!(matches!(b.admit(Instant::now()), Admit::WaitUntil(_)));
        tokio::time::advance(Duration::from_millis(1)).await;
        assert_eq!(b.admit(Instant::now()), Admit::Any, "then it resumes");
        assert_eq!(b.state(), BreakerState::Closed);
    }

    #[tokio::test(start_paused = true)]
    async fn per_delivery_backpressure_leaves_the_target_flowing() {
        let mut b = Breaker::new(BreakerConfig {
            pause_target: false,
            ..BreakerConfig::default()
        });
        assert_eq!(
            b.record(Signal::Backpressure(Duration::from_secs(1)), Instant::now()),
            None
        );
        assert_eq!(b.admit(Instant::now()), Admit::Any);
    }

    #[test]
    fn a_call_is_backpressure_exactly_when_a_retry_carries_a_delay() {
        let cap = Duration::from_secs(5);
        assert_eq!(Signal::of_call(&[Outcome::Delivered], cap), Some(Signal::Success));
        assert_eq!(Signal::of_call(&[retry(None)], cap), Some(Signal::Failure));
        assert_eq!(
            Signal::of_call(&[retry(Some(1000))], cap),
            Some(Signal::Backpressure(Duration::from_secs(1)))
        );
        assert_eq!(
            Signal::of_call(&[retry(Some(60_000))], cap),
            Some(Signal::Backpressure(cap)),
            "capped at the target's max backoff"
        );
        assert_eq!(
            Signal::of_call(&[Outcome::Permanent { reason: "400".into() }], cap),
            None
        );
        assert_eq!(
            Signal::of_call(&[retry(None), Outcome::Delivered, retry(Some(200))], cap),
            Some(Signal::Backpressure(Duration::from_millis(200)))
        );
        assert_eq!(
            Signal::of_call(&[retry(None), Outcome::Delivered], cap),
            Some(Signal::Success)
        );
    }

    #[tokio::test(start_paused = true)]
    async fn legacy_consecutive_failures_keep_their_meaning() {
        let mut b = Breaker::new(BreakerConfig::consecutive(3, COOLDOWN));
        b.record(Signal::Failure, Instant::now());
        b.record(Signal::Failure, Instant::now());
        assert_eq!(b.record(Signal::Success, Instant::now()), None);
        b.record(Signal::Failure, Instant::now());
        b.record(Signal::Failure, Instant::now());
        assert!(matches!(
            b.record(Signal::Failure, Instant::now()),
            Some(Transition::Opened { failures: 3, .. })
        ));
        assert_eq!(b.consecutive_failures(), 3);

        let mut off = Breaker::new(BreakerConfig::consecutive(0, COOLDOWN));
        for _ in 0..100 {
            assert_eq!(off.record(Signal::Failure, Instant::now()), None);
        }
        assert_eq!(off.admit(Instant::now()), Admit::Any);
    }
}
