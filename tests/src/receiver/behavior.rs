//! [`Behavior`]: how the receiver answers the requests of one path (a status, scripted
//! failures, delays, hangs, or a load-dependent model), and the [`Reply`] it decides on.

use std::fmt;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rand::Rng;
use rand::rngs::StdRng;

use super::{PathLoad, RecordedRequest};

/// The `Retry-After` (seconds) of a load-dependent model's refusals.
pub const REFUSAL_RETRY_AFTER_SECS: u64 = 1;

/// How the receiver answers one request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Reply {
    /// Answer with this status code (and a short text body).
    Status(u16),
    /// Answer with this status code and a `Retry-After: secs` header.
    RetryAfter {
        /// Status code, usually 429 or 503.
        status: u16,
        /// Value of the `Retry-After` header, in seconds.
        secs: u64,
    },
    /// Never answer (the request stays open until the client gives up or
    /// the receiver is dropped).
    Hang,
    /// Sleep this long, then answer with the behaviour's default status.
    Delay(Duration),
    /// Answer with what the behaviour's responder ([`Behavior::respond_with`])
    /// computed from the request: this status and this JSON body.
    Computed {
        /// Status code.
        status: u16,
        /// Response body, sent as `application/json`.
        body: String,
    },
}

/// The function behind a [`Responder`].
type RespondFn = dyn Fn(&RecordedRequest) -> (u16, String) + Send + Sync;

/// Computes a reply from a request: `(status, JSON body)`; see [`Behavior::respond_with`].
#[derive(Clone)]
pub struct Responder(Arc<RespondFn>);

impl fmt::Debug for Responder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Responder(..)")
    }
}

/// A load-dependent model of a receiver at one path (see [`Behavior::admit`],
/// [`Behavior::token_bucket`] and [`Behavior::queueing`]). Its state (the requests in
/// service at the path, the bucket's tokens) lives in the receiver, per path.
#[derive(Clone, Debug, PartialEq)]
pub(super) enum Model {
    /// At most `limit` requests in service at once, each answered after `service`;
    /// beyond, an immediate 503 with `Retry-After`.
    Admit { limit: usize, service: Duration },
    /// A bucket of `burst` tokens refilled at `rate` per second; a request takes a token
    /// and is answered after `service`, or gets an immediate 429 with `Retry-After`
    /// when the bucket is empty.
    TokenBucket { rate: f64, burst: f64, service: Duration },
    /// Every request answered after `base + per_request × max(0, n − free)`, where `n` is
    /// the number in service once it arrived (itself included); never refuses.
    Queueing {
        base: Duration,
        per_request: Duration,
        free: usize,
    },
}

/// A token bucket's state: tokens left at `at`.
#[derive(Clone, Copy, Debug)]
pub(super) struct Bucket {
    pub(super) tokens: f64,
    pub(super) at: Instant,
}

impl Model {
    /// The reply to a request arriving at `now` while `load.in_progress` others are in
    /// service at its path; takes a token from the bucket when one is needed.
    pub(super) fn decide(&self, load: &mut PathLoad, now: Instant) -> Reply {
        let refused = |status| Reply::RetryAfter {
            status,
            secs: REFUSAL_RETRY_AFTER_SECS,
        };
        let served = |d: Duration| {
            if d.is_zero() {
                Reply::Status(200)
            } else {
                Reply::Delay(d)
            }
        };
        match *self {
            Model::Admit { limit, service } => {
                if load.in_progress < limit {
                    served(service)
                } else {
                    refused(503)
                }
            }
            Model::TokenBucket { rate, burst, service } => {
                let bucket = load.bucket.get_or_insert(Bucket { tokens: burst, at: now });
                let refill = now.saturating_duration_since(bucket.at).as_secs_f64() * rate;
                bucket.tokens = (bucket.tokens + refill).min(burst);
                bucket.at = now;
                if bucket.tokens >= 1.0 {
                    bucket.tokens -= 1.0;
                    served(service)
                } else {
                    refused(429)
                }
            }
            Model::Queueing {
                base,
                per_request,
                free,
            } => {
                let n = load.in_progress + 1;
                served(base + per_request * n.saturating_sub(free) as u32)
            }
        }
    }
}

#[derive(Clone, Debug)]
enum When {
    FirstN(usize),
    Fraction(f64),
    Always,
}

/// The scripted behaviour of one path. Rules are checked in the order they
/// were added; the first that matches decides the reply; if none matches,
/// the load-dependent model decides, if the behaviour has one, else the
/// default status is answered. "First K" rules count requests at this path
/// since the behaviour was installed.
#[derive(Clone, Debug)]
pub struct Behavior {
    pub(super) default_status: u16,
    rules: Vec<(When, Reply)>,
    pub(super) seed: u64,
    responder: Option<Responder>,
    pub(super) model: Option<Model>,
}

impl Default for Behavior {
    fn default() -> Self {
        Self::ok()
    }
}

impl Behavior {
    /// Answer 200 to everything.
    pub fn ok() -> Self {
        Self::status(200)
    }

    /// Answer `status` to everything (unless a rule added later says otherwise).
    pub fn status(status: u16) -> Self {
        Self {
            default_status: status,
            rules: Vec::new(),
            seed: 0x5eed,
            responder: None,
            model: None,
        }
    }

    fn model(model: Model) -> Self {
        Self {
            model: Some(model),
            ..Self::ok()
        }
    }

    /// A receiver that admits at most `n` requests at once at this path: each admitted one
    /// is answered 200 after `service`; beyond `n` in service, a request gets an immediate
    /// 503 with `Retry-After: 1` (and is not in service). Its capacity is `n / service`
    /// requests per second. To change `n` at run time, [`Receiver::behave`] the path
    /// again: the requests in service are the path's, and count against the new limit.
    pub fn admit(n: usize, service: Duration) -> Self {
        Self::model(Model::Admit { limit: n, service })
    }

    /// A token-bucket rate limit: a bucket of `burst` tokens (full at the start) refilled at
    /// `rate` tokens per second; a request that finds a token takes it and is answered 200
    /// (at once, or after [`Behavior::service_time`]); one that finds the bucket empty gets
    /// an immediate 429 with `Retry-After: 1`. The bucket starts full again whenever the
    /// path's behaviour is replaced.
    pub fn token_bucket(rate: f64, burst: u32) -> Self {
        Self::model(Model::TokenBucket {
            rate,
            burst: f64::from(burst.max(1)),
            service: Duration::ZERO,
        })
    }

    /// A receiver whose latency grows with load and that never refuses: a request that
    /// arrives while `k` others are in service at this path is answered 200 after
    /// `base + per_request × max(0, k + 1 − free)`. Up to `free` at once cost nothing
    /// extra; `base` is its unloaded latency.
    pub fn queueing(base: Duration, per_request: Duration, free: usize) -> Self {
        Self::model(Model::Queueing {
            base,
            per_request,
            free,
        })
    }

    /// The time an admitted request takes, for [`Behavior::admit`] and
    /// [`Behavior::token_bucket`].
    ///
    /// # Panics
    /// On a behaviour without one of those models.
    pub fn service_time(mut self, d: Duration) -> Self {
        match &mut self.model {
            Some(Model::Admit { service, .. } | Model::TokenBucket { service, .. }) => *service = d,
            other => panic!("service_time: the behaviour has no admit or token-bucket model ({other:?})"),
        }
        self
    }

    fn rule(mut self, when: When, reply: Reply) -> Self {
        self.rules.push((when, reply));
        self
    }

    /// Answer `status` to the first `k` requests, then behave as otherwise scripted.
    pub fn fail_first(self, k: usize, status: u16) -> Self {
        self.rule(When::FirstN(k), Reply::Status(status))
    }

    /// Answer `status` with `Retry-After: secs` to the first `k` requests.
    pub fn retry_after_first(self, k: usize, status: u16, secs: u64) -> Self {
        self.rule(When::FirstN(k), Reply::RetryAfter { status, secs })
    }

    /// Answer `status` with `Retry-After: secs` to every request.
    pub fn retry_after(self, status: u16, secs: u64) -> Self {
        self.rule(When::Always, Reply::RetryAfter { status, secs })
    }

    /// Answer `status` with `Retry-After: secs` to a random fraction `p` of requests.
    pub fn retry_after_fraction(self, p: f64, status: u16, secs: u64) -> Self {
        self.rule(When::Fraction(p), Reply::RetryAfter { status, secs })
    }

    /// Never answer the first `k` requests.
    pub fn hang_first(self, k: usize) -> Self {
        self.rule(When::FirstN(k), Reply::Hang)
    }

    /// Never answer a random fraction `p` (0..=1) of requests (see [`Behavior::seed`]).
    pub fn hang_fraction(self, p: f64) -> Self {
        self.rule(When::Fraction(p), Reply::Hang)
    }

    /// Never answer any request.
    pub fn hang(self) -> Self {
        self.rule(When::Always, Reply::Hang)
    }

    /// Sleep `d` before answering the first `k` requests.
    pub fn delay_first(self, k: usize, d: Duration) -> Self {
        self.rule(When::FirstN(k), Reply::Delay(d))
    }

    /// Sleep `d` before answering a random fraction `p` of requests.
    pub fn delay_fraction(self, p: f64, d: Duration) -> Self {
        self.rule(When::Fraction(p), Reply::Delay(d))
    }

    /// Sleep `d` before answering every request.
    pub fn delay(self, d: Duration) -> Self {
        self.rule(When::Always, Reply::Delay(d))
    }

    /// Answer `status` to a random fraction `p` of requests.
    pub fn fail_fraction(self, p: f64, status: u16) -> Self {
        self.rule(When::Fraction(p), Reply::Status(status))
    }

    /// Seed of the random generator used by the `*_fraction` rules (default fixed).
    pub fn seed(mut self, seed: u64) -> Self {
        self.seed = seed;
        self
    }

    /// Answer every request that no rule claims with what `f` computes from it:
    /// `(status, body)`, the body sent as `application/json` (recorded as
    /// [`Reply::Computed`]). Rules added with the other methods still come
    /// first, and a load-dependent model claims every request a rule leaves. `f` runs while the receiver records the request, so it must not
    /// call back into the [`Receiver`]; it may keep state of its own (e.g. to
    /// fail an item only the first time it is seen).
    pub fn respond_with(mut self, f: impl Fn(&RecordedRequest) -> (u16, String) + Send + Sync + 'static) -> Self {
        self.responder = Some(Responder(Arc::new(f)));
        self
    }

    /// The reply to `record`, whose `reply` holds what the rules decided: a
    /// default reply (no rule matched) is computed by the responder, if any.
    pub(super) fn finish(&self, record: &mut RecordedRequest, by_rule: bool) {
        if let (false, Some(responder)) = (by_rule, &self.responder) {
            let (status, body) = (responder.0)(record);
            record.reply = Reply::Computed { status, body };
        }
    }

    /// The reply by the rules, and whether a rule (rather than the default) decided it.
    pub(super) fn decide_by_rule(&self, index: usize, rng: &mut StdRng) -> (Reply, bool) {
        for (when, reply) in &self.rules {
            let hit = match when {
                When::FirstN(k) => index < *k,
                When::Fraction(p) => rng.random::<f64>() < *p,
                When::Always => true,
            };
            if hit {
                return (reply.clone(), true);
            }
        }
        (Reply::Status(self.default_status), false)
    }
}
