//! Retry policy: the failure classes' schedules, how long to wait before the next attempt
//! (exponential backoff with full or equal jitter, a receiver's `Retry-After` taking
//! precedence) and what a finished attempt means
//! for its delivery (delivered, retry later, or dead). Pure functions, no I/O, no clock:
//! callers pass `now` and the randomness in.

use std::time::Duration;

use rand::Rng;

use crate::domain::{DeliveryStatus, Millis, Outcome, TargetClass, cap_error_text};

/// How a wait is drawn below its ceiling.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Jitter {
    /// Uniform in `[0, ceiling]`: spreads retries best; some waits are short.
    Full,
    /// Uniform in `[ceiling/2, ceiling]`: still spread, but a schedule keeps its length.
    Equal,
}

/// A target's retry schedule.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RetryPolicy {
    /// Attempts in all, the first included. After this many failures the delivery gives up.
    pub max_attempts: u32,
    /// The backoff ceiling after the first failure.
    pub initial_backoff: Duration,
    /// Each further failure multiplies the ceiling by this (at least 1).
    pub multiplier: f64,
    /// No wait is ever longer than this, a receiver's `Retry-After` included.
    pub max_backoff: Duration,
    pub jitter: Jitter,
    /// What a delivery becomes when it gives up: `dead`, or `discarded` for best-effort.
    pub give_up: DeliveryStatus,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        TargetClass::Critical.default_retry()
    }
}

impl TargetClass {
    /// The class's retry schedule, which a manifest's `[retry]` table may override.
    ///
    /// - critical: 8 attempts, ceilings 30 s × 5ⁿ up to 24 h, equal jitter: on average more
    ///   than a day of trying (at least 27 h between the first and the last attempt), then dead;
    /// - best-effort: 3 attempts within seconds, then discarded;
    /// - slow: 10 attempts, 10 s doubling up to 1 h, then dead;
    /// - batched: 10 attempts, 1 s doubling up to 10 min, then dead.
    pub fn default_retry(self) -> RetryPolicy {
        let (max_attempts, initial, multiplier, max, jitter) = match self {
            TargetClass::Critical => (8, 30_000, 5.0, 24 * 3_600_000, Jitter::Equal),
            TargetClass::BestEffort => (3, 500, 2.0, 5_000, Jitter::Full),
            TargetClass::Slow => (10, 10_000, 2.0, 3_600_000, Jitter::Full),
            TargetClass::Batched => (10, 1_000, 2.0, 600_000, Jitter::Full),
        };
        RetryPolicy {
            max_attempts,
            initial_backoff: Duration::from_millis(initial),
            multiplier,
            max_backoff: Duration::from_millis(max),
            jitter,
            give_up: if self == TargetClass::BestEffort {
                DeliveryStatus::Discarded
            } else {
                DeliveryStatus::Dead
            },
        }
    }

    /// The class's attempt deadline when the manifest sets none.
    pub fn default_timeout(self) -> Duration {
        match self {
            TargetClass::Slow => Duration::from_secs(300),
            _ => Duration::from_secs(10),
        }
    }

    /// Claim priority when the shared pool is saturated: lower goes first.
    pub fn priority(self) -> u8 {
        match self {
            TargetClass::Critical => 0,
            TargetClass::Batched => 1,
            TargetClass::Slow => 2,
            TargetClass::BestEffort => 3,
        }
    }
}

impl RetryPolicy {
    /// The upper bound of the wait after failed attempt number `attempt` (1-based):
    /// `initial_backoff * multiplier^(attempt-1)`, capped at `max_backoff`.
    pub fn ceiling(&self, attempt: u32) -> Duration {
        let exp = attempt.saturating_sub(1).min(64) as i32;
        let ms = self.initial_backoff.as_millis() as f64 * self.multiplier.max(1.0).powi(exp);
        let cap = self.max_backoff.as_millis() as f64;
        Duration::from_millis(ms.min(cap) as u64)
    }

    /// The wait after failed attempt number `attempt`, drawn below the ceiling by the jitter
    /// (which spreads retries of many deliveries that failed together), unless the receiver
    /// asked for a delay, which then wins, capped at `max_backoff`.
    pub fn backoff(&self, attempt: u32, retry_after: Option<Duration>, rng: &mut impl Rng) -> Duration {
        if let Some(after) = retry_after {
            return after.min(self.max_backoff);
        }
        let ceiling = self.ceiling(attempt).as_millis() as u64;
        let floor = match self.jitter {
            Jitter::Full => 0,
            Jitter::Equal => ceiling / 2,
        };
        Duration::from_millis(rng.random_range(floor..=ceiling))
    }
}

/// What the store should record for a delivery after an attempt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    pub status: DeliveryStatus,
    /// When to try again; only meaningful for [`DeliveryStatus::Pending`].
    pub next_attempt_at: Millis,
    /// The error to keep as the delivery's `last_error`.
    pub last_error: Option<String>,
}

/// Decides the fate of a delivery whose attempt number `attempt` ended with `outcome`.
/// The error text kept is capped (`domain::MAX_ERROR_TEXT`).
pub fn decide(policy: &RetryPolicy, attempt: u32, outcome: &Outcome, now: Millis, rng: &mut impl Rng) -> Decision {
    let mut d = decide_uncapped(policy, attempt, outcome, now, rng);
    d.last_error = d.last_error.map(cap_error_text);
    d
}

fn decide_uncapped(policy: &RetryPolicy, attempt: u32, outcome: &Outcome, now: Millis, rng: &mut impl Rng) -> Decision {
    match outcome {
        Outcome::Delivered => Decision {
            status: DeliveryStatus::Delivered,
            next_attempt_at: now,
            last_error: None,
        },
        Outcome::Permanent { reason } => Decision {
            status: policy.give_up,
            next_attempt_at: now,
            last_error: Some(format!("permanent failure: {reason}")),
        },
        Outcome::Retry { reason, .. } if attempt >= policy.max_attempts => Decision {
            status: policy.give_up,
            next_attempt_at: now,
            last_error: Some(format!("gave up after {attempt} attempts: {reason}")),
        },
        Outcome::Retry { reason, after } => {
            let wait = policy.backoff(attempt, *after, rng);
            Decision {
                status: DeliveryStatus::Pending,
                next_attempt_at: now + wait.as_millis() as Millis,
                last_error: Some(reason.clone()),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;
    use rand::rngs::StdRng;

    fn policy() -> RetryPolicy {
        RetryPolicy {
            max_attempts: 5,
            initial_backoff: Duration::from_millis(100),
            multiplier: 2.0,
            max_backoff: Duration::from_millis(1_000),
            jitter: Jitter::Full,
            give_up: DeliveryStatus::Dead,
        }
    }

    #[test]
    fn ceiling_doubles_then_caps() {
        let p = policy();
        let ceilings: Vec<u128> = (1..=6).map(|a| p.ceiling(a).as_millis()).collect();
        assert_eq!(ceilings, vec![100, 200, 400, 800, 1_000, 1_000]);
        assert_eq!(
            p.ceiling(10_000),
            p.max_backoff,
            "huge attempt numbers must not overflow"
        );
    }

    #[test]
    fn jitter_stays_within_bounds_and_actually_varies() {
        let p = policy();
        let mut rng = StdRng::seed_from_u64(7);
        for attempt in 1..=8 {
            let waits: Vec<Duration> = (0..200).map(|_| p.backoff(attempt, None, &mut rng)).collect();
            assert!(waits.iter().all(|w| *w <= p.ceiling(attempt)));
            let distinct: std::collections::HashSet<_> = waits.iter().collect();
            assert!(distinct.len() > 20, "full jitter should spread waits, got {distinct:?}");
            // Full jitter covers the whole range: some waits land in the lower and upper quarters.
            let c = p.ceiling(attempt);
            assert!(waits.iter().any(|w| *w < c / 4));
            assert!(waits.iter().any(|w| *w > c * 3 / 4));
        }
    }

    #[test]
    fn mean_wait_grows_with_attempts() {
        let p = RetryPolicy {
            max_backoff: Duration::from_secs(3600),
            ..policy()
        };
        let mut rng = StdRng::seed_from_u64(1);
        let mean = |a: u32, rng: &mut StdRng| (0..500).map(|_| p.backoff(a, None, rng).as_millis()).sum::<u128>() / 500;
        let (m1, m3, m5) = (mean(1, &mut rng), mean(3, &mut rng), mean(5, &mut rng));
        assert!(m1 < m3 && m3 < m5, "{m1} {m3} {m5}");
    }

    #[test]
    fn retry_after_takes_precedence_but_is_capped() {
        let p = policy();
        let mut rng = StdRng::seed_from_u64(3);
        assert_eq!(
            p.backoff(1, Some(Duration::from_millis(700)), &mut rng),
            Duration::from_millis(700),
            "a receiver's Retry-After beats the (smaller) jittered backoff"
        );
        assert_eq!(p.backoff(1, Some(Duration::from_secs(3600)), &mut rng), p.max_backoff);
        assert_eq!(p.backoff(4, Some(Duration::ZERO), &mut rng), Duration::ZERO);
    }

    #[test]
    fn decisions_follow_the_outcome_and_attempt_budget() {
        let p = policy();
        let mut rng = StdRng::seed_from_u64(9);
        let retry = Outcome::Retry {
            reason: "503".into(),
            after: None,
        };
        let d = decide(&p, 1, &retry, 1_000, &mut rng);
        assert_eq!(d.status, DeliveryStatus::Pending);
        assert!((1_000..=1_100).contains(&d.next_attempt_at));
        assert_eq!(d.last_error.as_deref(), Some("503"));

        let d = decide(&p, 5, &retry, 1_000, &mut rng);
        assert_eq!(d.status, DeliveryStatus::Dead);
        assert!(d.last_error.unwrap().contains("gave up after 5 attempts"));

        let d = decide(&p, 1, &Outcome::Permanent { reason: "400".into() }, 0, &mut rng);
        assert_eq!(d.status, DeliveryStatus::Dead);

        let d = decide(&p, 3, &Outcome::Delivered, 0, &mut rng);
        assert_eq!(d.status, DeliveryStatus::Delivered);
        assert_eq!(d.last_error, None);
    }

    #[test]
    fn a_huge_reason_is_stored_capped() {
        let mut rng = StdRng::seed_from_u64(4);
        let reason = "y".repeat(1 << 20);
        let d = decide(&policy(), 5, &Outcome::Retry { reason, after: None }, 0, &mut rng);
        let e = d.last_error.unwrap();
        assert!(e.starts_with("gave up after 5 attempts: yyy"));
        assert!(
            e.len() <= crate::domain::MAX_ERROR_TEXT && e.ends_with("[cut from 1048602 bytes]"),
            "{}",
            &e[e.len() - 40..]
        );
    }

    #[test]
    fn best_effort_discards_where_others_die() {
        let mut rng = StdRng::seed_from_u64(5);
        let retry = Outcome::Retry {
            reason: "timeout".into(),
            after: None,
        };
        let be = TargetClass::BestEffort.default_retry();
        let d = decide(&be, be.max_attempts, &retry, 0, &mut rng);
        assert_eq!(d.status, DeliveryStatus::Discarded);
        let d = decide(&be, 1, &Outcome::Permanent { reason: "400".into() }, 0, &mut rng);
        assert_eq!(d.status, DeliveryStatus::Discarded);
        let critical = TargetClass::Critical.default_retry();
        assert_eq!(
            decide(&critical, critical.max_attempts, &retry, 0, &mut rng).status,
            DeliveryStatus::Dead
        );
    }

    #[test]
    fn critical_schedule_spans_more_than_a_day() {
        let p = TargetClass::Critical.default_retry();
        assert_eq!(p.max_attempts, 8);
        let mut rng = StdRng::seed_from_u64(11);
        for _ in 0..50 {
            // The waits between the 8 attempts: after failures 1..=7.
            let total: Duration = (1..p.max_attempts).map(|a| p.backoff(a, None, &mut rng)).sum();
            assert!(total > Duration::from_secs(24 * 3600), "{total:?}");
        }
        let be = TargetClass::BestEffort.default_retry();
        let worst: Duration = (1..be.max_attempts).map(|a| be.ceiling(a)).sum();
        assert!(
            worst < Duration::from_secs(10),
            "best-effort gives up within seconds: {worst:?}"
        );
    }

    #[test]
    fn equal_jitter_keeps_the_upper_half() {
        let p = RetryPolicy {
            jitter: Jitter::Equal,
            ..policy()
        };
        let mut rng = StdRng::seed_from_u64(2);
        for a in 1..=6 {
            let c = p.ceiling(a);
            for _ in 0..100 {
                let w = p.backoff(a, None, &mut rng);
                assert!(w >= c / 2 && w <= c, "{w:?} outside [{:?}, {c:?}]", c / 2);
            }
        }
    }
}
