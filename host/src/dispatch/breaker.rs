//! The circuit breaker of one target: after `failures` consecutive retryable failures the
//! target's lane opens and claims nothing (its deliveries stay pending, no attempts are
//! burned); after `cooldown` it lets one probe through, and closes when a probe succeeds.
//! A pure state machine: callers pass the time in.

use std::time::Duration;

use tokio::time::Instant;

/// When a breaker opens and how long it stays open.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BreakerConfig {
    /// Consecutive retryable failures that open the breaker; 0 disables it.
    pub failures: u32,
    /// How long it stays open before probing.
    pub cooldown: Duration,
}

impl Default for BreakerConfig {
    fn default() -> Self {
        Self {
            failures: 5,
            cooldown: Duration::from_secs(30),
        }
    }
}

/// Where a breaker stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BreakerState {
    Closed,
    Open { until: Instant },
    HalfOpen { probing: bool },
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
    /// Claim nothing before this instant.
    WaitUntil(Instant),
    /// A probe is running: claim nothing until its outcome is recorded.
    Hold,
}

/// A change worth telling the operator about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transition {
    Opened {
        consecutive_failures: u32,
    },
    /// Closed again after being open; `failures` counts the failures since it first opened.
    Recovered {
        failures: u32,
    },
}

/// One target's breaker.
#[derive(Debug, Clone)]
pub struct Breaker {
    config: BreakerConfig,
    state: BreakerState,
    consecutive: u32,
    failures_while_down: u32,
}

impl Breaker {
    pub fn new(config: BreakerConfig) -> Self {
        Self {
            config,
            state: BreakerState::Closed,
            consecutive: 0,
            failures_while_down: 0,
        }
    }

    pub fn state(&self) -> BreakerState {
        self.state
    }

    pub fn consecutive_failures(&self) -> u32 {
        self.consecutive
    }

    /// What the lane may claim at `now`; moves an expired open breaker to half-open.
    pub fn admit(&mut self, now: Instant) -> Admit {
        match self.state {
            BreakerState::Closed => Admit::Any,
            BreakerState::Open { until } if now < until => Admit::WaitUntil(until),
            BreakerState::Open { .. } | BreakerState::HalfOpen { probing: false } => Admit::Probe,
            BreakerState::HalfOpen { probing: true } => Admit::Hold,
        }
    }

    /// The lane claimed the probe that [`Admit::Probe`] allowed (`claimed` false: there was
    /// nothing to claim, so no probe runs).
    pub fn probe_started(&mut self, claimed: bool) {
        if matches!(self.state, BreakerState::Open { .. } | BreakerState::HalfOpen { .. }) {
            self.state = BreakerState::HalfOpen { probing: claimed };
        }
    }

    /// Records an attempt's result: `success` for delivered, `false` for a retryable failure.
    /// Permanent failures say nothing about the target's health and are not recorded.
    pub fn record(&mut self, success: bool, now: Instant) -> Option<Transition> {
        if self.config.failures == 0 {
            return None;
        }
        if success {
            self.consecutive = 0;
            if self.state == BreakerState::Closed {
                return None;
            }
            self.state = BreakerState::Closed;
            let failures = std::mem::take(&mut self.failures_while_down);
            return Some(Transition::Recovered { failures });
        }
        self.consecutive += 1;
        match self.state {
            BreakerState::Closed if self.consecutive >= self.config.failures => {
                self.failures_while_down = self.consecutive;
                self.state = BreakerState::Open {
                    until: now + self.config.cooldown,
                };
                Some(Transition::Opened {
                    consecutive_failures: self.consecutive,
                })
            }
            BreakerState::Closed => None,
            BreakerState::HalfOpen { .. } => {
                self.failures_while_down += 1;
                self.state = BreakerState::Open {
                    until: now + self.config.cooldown,
                };
                Some(Transition::Opened {
                    consecutive_failures: self.consecutive,
                })
            }
            // An attempt claimed before the breaker opened failed late: counted, nothing more.
            BreakerState::Open { .. } => {
                self.failures_while_down += 1;
                None
            }
        }
    }
}

/// The breakers of every target, shared by the dispatcher (which drives them) and the API
/// (which shows them). Breakers outlive reloads of their target.
#[derive(Debug, Default)]
pub struct Breakers {
    map: std::sync::Mutex<std::collections::HashMap<String, Breaker>>,
}

impl Breakers {
    /// Runs `f` on `target`'s breaker, creating it, or updating its configuration, first.
    pub fn with<R>(&self, target: &str, config: BreakerConfig, f: impl FnOnce(&mut Breaker) -> R) -> R {
        let mut map = self.map.lock().unwrap_or_else(|e| e.into_inner());
        let breaker = map.entry(target.to_owned()).or_insert_with(|| Breaker::new(config));
        breaker.config = config;
        f(breaker)
    }

    /// `target`'s breaker state and consecutive failures, if it has a breaker.
    pub fn status(&self, target: &str) -> Option<(&'static str, u32)> {
        let map = self.map.lock().unwrap_or_else(|e| e.into_inner());
        map.get(target).map(|b| (b.state.as_str(), b.consecutive))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn breaker() -> Breaker {
        Breaker::new(BreakerConfig {
            failures: 3,
            cooldown: Duration::from_secs(10),
        })
    }

    #[tokio::test(start_paused = true)]
    async fn opens_after_consecutive_failures_probes_after_cooldown_and_closes() {
        let mut b = breaker();
        let now = Instant::now();
        assert_eq!(b.admit(now), Admit::Any);
        assert_eq!(b.record(false, now), None);
        assert_eq!(b.record(true, now), None, "a success resets the count");
        assert_eq!(b.record(false, now), None);
        assert_eq!(b.record(false, now), None);
        assert_eq!(
            b.record(false, now),
            Some(Transition::Opened {
                consecutive_failures: 3
            })
        );
        assert_eq!(b.admit(Instant::now()), Admit::WaitUntil(now + Duration::from_secs(10)));

        tokio::time::advance(Duration::from_secs(9)).await;
        assert!(
            matches!(b.admit(Instant::now()), Admit::WaitUntil(_)),
            "still cooling down"
        );
        tokio::time::advance(Duration::from_secs(1)).await;
        assert_eq!(b.admit(Instant::now()), Admit::Probe);
        b.probe_started(true);
        assert_eq!(b.admit(Instant::now()), Admit::Hold, "one probe at a time");
        assert_eq!(b.state().as_str(), "half_open");

        // The probe fails: open again for another cooldown.
        assert!(matches!(
            b.record(false, Instant::now()),
            Some(Transition::Opened { .. })
        ));
        assert!(matches!(b.admit(Instant::now()), Admit::WaitUntil(_)));
        tokio::time::advance(Duration::from_secs(10)).await;
        assert_eq!(b.admit(Instant::now()), Admit::Probe);
        b.probe_started(true);
        assert_eq!(
            b.record(true, Instant::now()),
            Some(Transition::Recovered { failures: 4 })
        );
        assert_eq!(b.state(), BreakerState::Closed);
        assert_eq!(b.admit(Instant::now()), Admit::Any);
    }

    #[tokio::test(start_paused = true)]
    async fn a_probe_with_nothing_to_claim_does_not_block() {
        let mut b = breaker();
        for _ in 0..3 {
            b.record(false, Instant::now());
        }
        tokio::time::advance(Duration::from_secs(10)).await;
        assert_eq!(b.admit(Instant::now()), Admit::Probe);
        b.probe_started(false);
        assert_eq!(b.admit(Instant::now()), Admit::Probe, "the next claim is still a probe");
    }

    #[tokio::test(start_paused = true)]
    async fn disabled_breaker_never_opens() {
        let mut b = Breaker::new(BreakerConfig {
            failures: 0,
            cooldown: Duration::from_secs(1),
        });
        for _ in 0..100 {
            assert_eq!(b.record(false, Instant::now()), None);
        }
        assert_eq!(b.admit(Instant::now()), Admit::Any);
    }
}
