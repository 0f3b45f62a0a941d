//! Retry policy: how long to wait before the next attempt (exponential backoff with full
//! jitter, a receiver's `Retry-After` taking precedence) and what a finished attempt means
//! for its delivery (delivered, retry later, or dead). Pure functions, no I/O, no clock:
//! callers pass `now` and the randomness in.

use std::time::Duration;

use rand::Rng;

use crate::domain::{DeliveryStatus, Millis, Outcome};

/// A target's retry schedule.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Attempts in all, the first included. After this many failures the delivery is dead.
    pub max_attempts: u32,
    /// The backoff ceiling after the first failure.
    pub initial_backoff: Duration,
    /// No wait is ever longer than this, a receiver's `Retry-After` included.
    pub max_backoff: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            max_attempts: 10,
            initial_backoff: Duration::from_secs(1),
            max_backoff: Duration::from_secs(600),
        }
    }
}

impl RetryPolicy {
    /// The upper bound of the wait after failed attempt number `attempt` (1-based):
    /// `initial_backoff * 2^(attempt-1)`, capped at `max_backoff`.
    pub fn ceiling(&self, attempt: u32) -> Duration {
        let exp = attempt.saturating_sub(1).min(32);
        self.initial_backoff
            .saturating_mul(1u32 << exp.min(31))
            .min(self.max_backoff)
    }

    /// The wait after failed attempt number `attempt`: uniform in `[0, ceiling]` ("full
    /// jitter", which spreads retries of many deliveries that failed together), unless the
    /// receiver asked for a delay, which then wins, capped at `max_backoff`.
    pub fn backoff(&self, attempt: u32, retry_after: Option<Duration>, rng: &mut impl Rng) -> Duration {
        if let Some(after) = retry_after {
            return after.min(self.max_backoff);
        }
        let ceiling = self.ceiling(attempt).as_millis() as u64;
        Duration::from_millis(rng.random_range(0..=ceiling))
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
pub fn decide(policy: &RetryPolicy, attempt: u32, outcome: &Outcome, now: Millis, rng: &mut impl Rng) -> Decision {
    match outcome {
        Outcome::Delivered => Decision {
            status: DeliveryStatus::Delivered,
            next_attempt_at: now,
            last_error: None,
        },
        Outcome::Permanent { reason } => Decision {
            status: DeliveryStatus::Dead,
            next_attempt_at: now,
            last_error: Some(format!("permanent failure: {reason}")),
        },
        Outcome::Retry { reason, .. } if attempt >= policy.max_attempts => Decision {
            status: DeliveryStatus::Dead,
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
            max_backoff: Duration::from_millis(1_000),
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
}
