//! A target's rate limit: a token bucket refilled smoothly at `rate` per second, holding at
//! most `burst` tokens. One token is one attempt (one event of a batch). A pure state
//! machine: callers pass the time in.

use std::time::Duration;

use tokio::time::Instant;

/// A token bucket.
#[derive(Debug, Clone)]
pub struct TokenBucket {
    rate: f64,
    burst: f64,
    tokens: f64,
    last: Instant,
}

impl TokenBucket {
    /// A full bucket: `rate` tokens per second (> 0), at most `max(rate, 1)` at once.
    pub fn new(rate: f64, now: Instant) -> Self {
        let burst = rate.max(1.0);
        Self {
            rate,
            burst,
            tokens: burst,
            last: now,
        }
    }

    /// An empty bucket of `rate` tokens per second (> 0) holding at most `burst` (at least 1):
    /// its first token is due in `1 / rate`.
    pub fn empty(rate: f64, burst: f64, now: Instant) -> Self {
        Self {
            rate,
            burst: burst.max(1.0),
            tokens: 0.0,
            last: now,
        }
    }

    /// Changes the rate and the burst from `now` on (tokens due until now at the old rate).
    pub fn set_rate(&mut self, rate: f64, burst: f64, now: Instant) {
        self.refill(now);
        self.rate = rate;
        self.burst = burst.max(1.0);
        self.tokens = self.tokens.min(self.burst);
    }

    fn refill(&mut self, now: Instant) {
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.tokens = (self.tokens + elapsed * self.rate).min(self.burst);
        self.last = now;
    }

    /// Takes up to `wanted` whole tokens; returns how many were taken.
    pub fn take(&mut self, wanted: usize, now: Instant) -> usize {
        self.refill(now);
        let granted = (self.tokens.floor() as usize).min(wanted);
        self.tokens -= granted as f64;
        granted
    }

    /// Gives back tokens taken but not used (nothing was due to claim).
    pub fn give_back(&mut self, n: usize) {
        self.tokens = (self.tokens + n as f64).min(self.burst);
    }

    /// How long until one whole token is available.
    pub fn wait_for_one(&mut self, now: Instant) -> Duration {
        self.refill(now);
        if self.tokens >= 1.0 {
            Duration::ZERO
        } else {
            Duration::from_secs_f64((1.0 - self.tokens) / self.rate)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn smooth_rate_with_bounded_burst() {
        let mut b = TokenBucket::new(10.0, Instant::now());
        assert_eq!(
            b.take(100, Instant::now()),
            10,
            "a full bucket allows one second's burst"
        );
        assert_eq!(b.take(1, Instant::now()), 0);
        assert_eq!(b.wait_for_one(Instant::now()), Duration::from_millis(100));
        tokio::time::advance(Duration::from_millis(250)).await;
        assert_eq!(b.take(100, Instant::now()), 2);
        tokio::time::advance(Duration::from_secs(60)).await;
        assert_eq!(b.take(100, Instant::now()), 10, "idle time never grows the burst");
        // Over a long run the rate holds: 10/s for 5 s is 50 more.
        let mut total = 0;
        for _ in 0..50 {
            tokio::time::advance(Duration::from_millis(100)).await;
            total += b.take(100, Instant::now());
        }
        assert_eq!(total, 50);
    }

    #[tokio::test(start_paused = true)]
    async fn slow_rates_and_give_back() {
        let mut b = TokenBucket::new(0.5, Instant::now());
        assert_eq!(b.take(5, Instant::now()), 1);
        assert_eq!(b.wait_for_one(Instant::now()), Duration::from_secs(2));
        b.give_back(1);
        assert_eq!(b.take(5, Instant::now()), 1);
    }
}
