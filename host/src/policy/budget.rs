//! The retry budget of one target (the shape of Finagle's `RetryBudget`): over a sliding
//! window, retries may add at most `ratio` of the first attempts started, above a floor of
//! `min_per_sec` retries a second. A retry beyond the budget is not a failure: the caller
//! gives its delivery back to wait, with its attempt uncounted (a pure state machine: callers
//! pass the time in).
//!
//! The budget holds retries back only while the receiver is under pressure (the caller says
//! when: outboxd engages it while the target's adaptive limit is below its ceiling, or its
//! breaker is not closed). A budget's purpose is to stop retries from piling onto a receiver
//! that is struggling; a receiver that takes everything outboxd sends (a flaky one that fails
//! a quarter of its requests at random, say) is better served by retrying at full speed,
//! which the adaptive limit already bounds.

use std::collections::VecDeque;
use std::time::Duration;

use tokio::time::Instant;

/// How much a target's retries may add.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BudgetConfig {
    /// Retries allowed per first attempt over the window (0.2: a fifth more).
    pub ratio: f64,
    /// Retries allowed a second whatever the first attempts.
    pub min_per_sec: f64,
    /// How far back the window reaches.
    pub window: Duration,
}

impl Default for BudgetConfig {
    /// Finagle's defaults: 20 % over 10 s, at least 10 a second.
    fn default() -> Self {
        Self {
            ratio: 0.2,
            min_per_sec: 10.0,
            window: Duration::from_secs(10),
        }
    }
}

/// Buckets the window is kept in.
const BUCKETS: u32 = 10;

/// The state of a budget, as shown to the operator.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BudgetStatus {
    /// First attempts and retries started in the window.
    pub first_attempts: u64,
    pub retries: u64,
    /// Retries the window allows.
    pub allowed: u64,
    /// Retries held back since the start.
    pub held: u64,
}

/// One target's retry budget.
#[derive(Debug, Clone)]
pub struct RetryBudget {
    config: BudgetConfig,
    /// (bucket start, first attempts, retries), oldest first.
    buckets: VecDeque<(Instant, u64, u64)>,
    held: u64,
}

impl RetryBudget {
    pub fn new(config: BudgetConfig) -> Self {
        Self {
            config,
            buckets: VecDeque::new(),
            held: 0,
        }
    }

    /// Takes a manifest's new settings, keeping the window.
    pub fn reconfigure(&mut self, config: BudgetConfig) {
        self.config = config;
    }

    fn bucket_len(&self) -> Duration {
        (self.config.window / BUCKETS).max(Duration::from_millis(1))
    }

    fn expire(&mut self, now: Instant) {
        let window = self.config.window;
        while self
            .buckets
            .front()
            .is_some_and(|(start, _, _)| now.saturating_duration_since(*start) >= window)
        {
            self.buckets.pop_front();
        }
    }

    fn current(&mut self, now: Instant) -> &mut (Instant, u64, u64) {
        self.expire(now);
        let len = self.bucket_len();
        if self
            .buckets
            .back()
            .is_none_or(|(start, _, _)| now.saturating_duration_since(*start) >= len)
        {
            self.buckets.push_back((now, 0, 0));
        }
        self.buckets.back_mut().expect("just pushed")
    }

    fn totals(&mut self, now: Instant) -> (u64, u64) {
        self.expire(now);
        self.buckets
            .iter()
            .fold((0, 0), |(f, r), (_, first, retries)| (f + first, r + retries))
    }

    /// Retries the window allows: `ratio` of the first attempts, above the floor of
    /// `min_per_sec`, or of `ratio` of `capacity_per_sec` (what the receiver can take, as
    /// learned) if that is more.
    fn allowed(&self, first_attempts: u64, capacity_per_sec: f64) -> u64 {
        let per_sec = self.config.min_per_sec.max(self.config.ratio * capacity_per_sec);
        (per_sec * self.config.window.as_secs_f64() + self.config.ratio * first_attempts as f64) as u64
    }

    /// A first attempt started.
    pub fn first_attempt(&mut self, now: Instant) {
        self.current(now).1 += 1;
    }

    /// A retry wants to start: `true` (and counted) if the budget allows it, `false` (and
    /// counted as held) if not. `capacity_per_sec`: what the receiver can take, as learned (0
    /// when not known): the floor is at least `ratio` of it, so that once no first attempts are
    /// left a receiver's retries still go at a share of what it can take.
    pub fn try_retry(&mut self, now: Instant, capacity_per_sec: f64) -> bool {
        let (first, retries) = self.totals(now);
        if retries < self.allowed(first, capacity_per_sec) {
            self.current(now).2 += 1;
            true
        } else {
            self.held += 1;
            false
        }
    }

    /// A retry that starts whatever the budget says (the budget is not engaged): counted, so
    /// that the window is right when it is.
    pub fn retry(&mut self, now: Instant) {
        self.current(now).2 += 1;
    }

    /// How long until the oldest bucket leaves the window and frees budget.
    pub fn wait(&self, now: Instant) -> Duration {
        self.buckets
            .front()
            .map_or(self.bucket_len(), |(start, _, _)| {
                (*start + self.config.window).saturating_duration_since(now)
            })
            .max(self.bucket_len())
    }

    pub fn status(&mut self, now: Instant, capacity_per_sec: f64) -> BudgetStatus {
        let (first_attempts, retries) = self.totals(now);
        BudgetStatus {
            first_attempts,
            retries,
            allowed: self.allowed(first_attempts, capacity_per_sec),
            held: self.held,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn budget(ratio: f64, min_per_sec: f64) -> RetryBudget {
        RetryBudget::new(BudgetConfig {
            ratio,
            min_per_sec,
            window: Duration::from_secs(10),
        })
    }

    #[test]
    fn retries_may_add_a_fifth_of_the_first_attempts() {
        let now = Instant::now();
        let mut b = budget(0.2, 0.0);
        for _ in 0..100 {
            b.first_attempt(now);
        }
        let granted = (0..50).filter(|_| b.try_retry(now, 0.0)).count();
        assert_eq!(granted, 20);
        let s = b.status(now, 0.0);
        assert_eq!((s.first_attempts, s.retries, s.allowed, s.held), (100, 20, 20, 30));
    }

    #[test]
    fn the_floor_allows_a_few_retries_a_second_with_no_first_attempts() {
        let now = Instant::now();
        let mut b = budget(0.2, 1.0);
        let granted = (0..50).filter(|_| b.try_retry(now, 0.0)).count();
        assert_eq!(granted, 10, "one a second over ten seconds");
    }

    #[test]
    fn with_no_first_attempts_left_retries_still_get_a_share_of_what_the_receiver_can_take() {
        let now = Instant::now();
        let mut b = budget(0.2, 1.0);
        // A receiver that takes 100 a second: a fifth of that, 20 a second over ten seconds.
        let granted = (0..500).filter(|_| b.try_retry(now, 100.0)).count();
        assert_eq!(granted, 200);
    }

    #[test]
    fn the_window_slides_and_frees_the_budget() {
        let start = Instant::now();
        let mut b = budget(0.2, 0.0);
        for _ in 0..10 {
            b.first_attempt(start);
        }
        assert!(b.try_retry(start, 0.0));
        assert!(b.try_retry(start, 0.0));
        assert!(!b.try_retry(start, 0.0), "two retries for ten first attempts");
        assert_eq!(b.wait(start), Duration::from_secs(10), "until the first bucket leaves");
        let later = start + Duration::from_secs(5);
        for _ in 0..5 {
            b.first_attempt(later);
        }
        assert!(b.try_retry(later, 0.0), "fifteen first attempts allow three");
        assert!(!b.try_retry(later, 0.0));
        let after = start + Duration::from_secs(10);
        let s = b.status(after, 0.0);
        assert_eq!(
            (s.first_attempts, s.retries),
            (5, 1),
            "the first bucket has left the window"
        );
        assert!(
            !b.try_retry(after, 0.0),
            "five first attempts allow one, which is taken"
        );
        for _ in 0..5 {
            b.first_attempt(after);
        }
        assert!(b.try_retry(after, 0.0));
    }

    #[test]
    fn retries_outside_the_budget_still_count_for_when_it_is_engaged() {
        let now = Instant::now();
        let mut b = budget(0.2, 0.0);
        for _ in 0..10 {
            b.first_attempt(now);
        }
        b.retry(now);
        b.retry(now);
        assert!(!b.try_retry(now, 0.0), "the two unbudgeted retries used it up");
    }
}
