//! The send rate of one target against a receiver that limits its rate (a pure state machine:
//! callers pass the time in and pace the attempts).
//!
//! A receiver's `429 Too Many Requests` says *how fast*, not *how many at once*: a token bucket
//! refuses one request in flight as readily as sixteen, so a concurrency limit cannot hold it
//! (a slot above its rate turns out refusals as fast as outboxd can send, and a limit low enough
//! to stop them leaves the rate unused). The pacer learns a rate instead, as AIMD on a send rate:
//! - **Engaged by a burst of 429s** ([`BURST_LIMITED`] in a row, or as many of the last
//!   [`RECENT`] answers and at least [`BURST_SHARE`] of them: a sender with many attempts in
//!   flight turns out a 429 per attempt as fast as they come back, so waiting for the share
//!   costs refusals): the rate starts at [`ENGAGE_FRACTION`] of what the receiver took over the
//!   last two round trips (its goodput: every answer but a refusal; at least over
//!   [`ENGAGE_SPAN`]) and doubles every two round trips until the first cut (slow start). 429s scattered among
//!   successes (a flaky receiver's) make no burst and engage nothing; each waits out its own
//!   delay.
//! - **Cut to what was taken.** While pacing, [`CUT_AFTER`] 429s since the last change (those
//!   after two round trips: earlier ones answer attempts started before it) cut the rate to
//!   [`DECREASE`] times what the receiver took since that change (from two round trips after
//!   it; over the last second, if it was longer ago), or the rate if lower, once that is
//!   measured: [`MEASURE_COUNT`] answers taken, or [`MEASURE_MAX`]. Measured, not
//!   halved: above a rate limit the receiver takes exactly its rate, so one cut lands just
//!   below it. The first cut after the pace is engaged ends its slow start: measured, if
//!   [`FIRST_MEASURE_COUNT`] answers were taken by then, else a halving (as TCP's).
//! - **Grows multiplicatively, faster the longer it is quiet**: [`FAST_GROWTH`] a second until
//!   the first cut and while well below where the last cut found the limit; near it
//!   [`GROWTH`] a second at first, doubling every second without a cut (at most
//!   [`GROWTH_MAX`]), so a steady bucket is approached slowly from below (its burst fills and
//!   is used, no token is lost) and a receiver whose limit was raised is found within
//!   seconds.
//! - **Released when it no longer binds**: a rate that has grown past twice what the receiver
//!   takes, [`RELEASE_AFTER`] after the last cut, means outboxd sends less than it may (the
//!   backlog is gone, or something else limits it). **Or when the 429s do not follow it**:
//!   [`SPIRAL`] cuts in a row, each before the pace grew back to where the last one found the
//!   limit, are a receiver that refuses a share at any rate (a flaky one caught in a burst).
//! - **Nothing taken at all** (a burst of 429s and nothing taken for [`PAUSE_AFTER`], or a cut
//!   below [`MIN_RATE`]): the receiver refuses even a trickle (a quota spent): the pacer asks
//!   for the target to pause for the receiver's requested delay (and keeps the floor rate
//!   for afterwards, if pacing).
//!
//! Why this shape (docs/adaptive-delivery.md): TCP-like AIMD on a rate, as
//! Finagle's and gRPC's client-side throttles and the AWS SDKs' adaptive retry mode do for
//! throttling errors (the SDKs' CUBIC growth; here a doubling growth rate, which gives the same
//! slow approach near the last cut and fast recovery far from it).

use std::collections::VecDeque;
use std::time::Duration;

use tokio::time::Instant;

use super::adaptive::Answer;

/// Answers remembered to tell a burst of 429s from scattered ones.
pub const RECENT: usize = 20;
/// 429s among the last [`RECENT`] answers that make a burst…
pub const BURST_LIMITED: usize = 3;
/// …if they are also at least this share of them.
pub const BURST_SHARE: f64 = 0.5;
/// 429s since the last change that cut the rate while pacing.
pub const CUT_AFTER: u32 = 2;
/// The share of the measured goodput a cut leaves.
pub const DECREASE: f64 = 0.95;
/// Answers taken since a change before what was taken is trusted for a cut (and as where the
/// limit was found)…
pub const MEASURE_COUNT: u32 = 10;
/// …but the first cut after the pace was engaged comes after this many: the engagement's own
/// measure may count the receiver's burst, and every moment above its rate is a refusal. What
/// it measures is not taken as where the limit was found: the pace grows fast from it.
pub const FIRST_MEASURE_COUNT: u32 = 5;
/// …or this long, if the receiver takes fewer.
pub const MEASURE_MAX: Duration = Duration::from_secs(1);
/// The least span over which what the receiver takes is measured when the pace is engaged
/// (else two round trips)…
pub const ENGAGE_SPAN: Duration = Duration::from_millis(20);
/// …and the share of it the pace starts at: a measure over so short a span is only an upper
/// bound (it counts the answers of a burst the receiver had saved up, sent by many attempts at
/// once), and every moment above the receiver's rate is a refusal. From there the pace doubles
/// every two round trips until its first cut, as TCP's slow start does.
pub const ENGAGE_FRACTION: f64 = 0.125;
/// What the receiver took lately, for a cut long after the last change.
pub const RECENTLY: Duration = Duration::from_millis(300);
/// The least time a change has to show before its answers count (else a round trip and a
/// quarter: the answers to attempts started before it are back by then).
pub const SETTLE_MIN: Duration = Duration::from_millis(10);
/// Cuts in a row, each before the pace grew back to where the last one found the limit, that
/// show the 429s do not follow the pace (a flaky receiver's, at any rate): the pace is released.
pub const SPIRAL: u32 = 3;
/// The growth of the rate a second, right after a cut…
pub const GROWTH: f64 = 0.02;
/// …doubling every second without one, up to this.
pub const GROWTH_MAX: f64 = 1.0;
/// The growth a second before the first cut, and while the pace is below [`FAST_BELOW`] times
/// what the receiver took at the last one: an engagement that measured too little (a sender
/// still speeding up) is made good within a second or two.
pub const FAST_GROWTH: f64 = 0.5;
pub const FAST_BELOW: f64 = 0.9;
/// The pace is released once it has grown past this multiple of the goodput…
pub const RELEASE_RATIO: f64 = 2.0;
/// …this long after the last cut.
pub const RELEASE_AFTER: Duration = Duration::from_secs(2);
/// The lowest rate (a second); below it, the target pauses instead.
pub const MIN_RATE: f64 = 1.0;
/// The pause when the receiver gave no delay.
pub const FLOOR_PAUSE: Duration = Duration::from_secs(1);
/// How long a burst of 429s with nothing taken at all goes on before the target pauses (the
/// first answers taken may still be on their way: a bucket's burst, answered after its
/// service time, comes back after the 429s of the attempts beyond it).
pub const PAUSE_AFTER: Duration = Duration::from_millis(250);
/// The goodput meter: the last answers taken, at most this many, none older than
/// [`METER_SPAN`].
const METER_CAP: usize = 256;
const METER_SPAN: Duration = Duration::from_secs(1);

/// What changed, for the caller to apply or tell.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum PaceChange {
    /// Pacing started at `rate` a second.
    Engaged { rate: f64 },
    /// The rate was cut.
    Lowered { from: f64, to: f64 },
    /// The receiver no longer limits the rate: pacing stopped.
    Released,
    /// The receiver takes nothing: pause the whole target this long.
    Pause(Duration),
}

/// When the receiver took its last answers: at most [`METER_CAP`] of them, none older than
/// a second.
#[derive(Debug, Clone, Default)]
struct Meter {
    taken: VecDeque<Instant>,
}

impl Meter {
    fn record(&mut self, now: Instant) {
        if self.taken.len() == METER_CAP {
            self.taken.pop_front();
        }
        self.taken.push_back(now);
    }

    /// Answers taken a second over the last second (see [`Meter::rate_over`]).
    fn rate(&mut self, now: Instant) -> f64 {
        self.rate_over(now, METER_SPAN)
    }

    /// Answers taken a second over the last `span`, counted from the oldest one in it (a sender
    /// that only just started, after an idle spell, is not averaged with the idle time; at a
    /// high rate, over the last [`METER_CAP`] answers).
    fn rate_over(&mut self, now: Instant, span: Duration) -> f64 {
        while self.taken.front().is_some_and(|t| now.duration_since(*t) >= METER_SPAN) {
            self.taken.pop_front();
        }
        let first = self.taken.partition_point(|t| now.duration_since(*t) >= span);
        let Some(oldest) = self.taken.get(first) else {
            return 0.0;
        };
        let over = now.duration_since(*oldest).max(SETTLE_MIN);
        (self.taken.len() - first) as f64 / over.as_secs_f64()
    }
}

/// The rate in force and what it has learned.
#[derive(Debug, Clone)]
struct Pace {
    rate: f64,
    /// What the receiver took when the pace was last cut: where its limit was found.
    found: Option<f64>,
    /// Whether it was cut since it was engaged.
    cut: bool,
    /// Cuts in a row before the pace grew back to `found`.
    spiral: u32,
    /// The last change (engaged or cut), and what the receiver took since.
    changed: Instant,
    taken_since: u32,
    limited_since: u32,
    /// When the rate last grew.
    grown: Instant,
}

/// The send rate of one target.
#[derive(Debug, Clone, Default)]
pub struct Pacer {
    meter: Meter,
    /// The last answers (true: a 429).
    recent: VecDeque<bool>,
    /// A smoothed round trip of the answers taken.
    rtt: Option<Duration>,
    /// The first 429 since the receiver last took an answer.
    limited_from: Option<Instant>,
    pace: Option<Pace>,
}

impl Pacer {
    pub fn new() -> Self {
        Self::default()
    }

    /// The rate in force (attempts a second), if pacing.
    pub fn rate(&self) -> Option<f64> {
        self.pace.as_ref().map(|p| p.rate)
    }

    /// How long a change is given to show before its answers count: a round trip and a quarter
    /// (answers to attempts started before it say nothing of it).
    fn settle_time(&self) -> Duration {
        self.rtt.map_or(Duration::ZERO, |r| r + r / 4).max(SETTLE_MIN)
    }

    /// A burst of 429s: [`BURST_LIMITED`] in a row, or as many among the last [`RECENT`] answers
    /// and [`BURST_SHARE`] of them.
    fn burst(&self) -> bool {
        let limited = self.recent.iter().filter(|l| **l).count();
        let in_a_row = self.recent.iter().rev().take(BURST_LIMITED).filter(|l| **l).count() == BURST_LIMITED;
        limited >= BURST_LIMITED && (in_a_row || limited as f64 >= BURST_SHARE * self.recent.len() as f64)
    }

    /// An attempt ended with `answer`.
    pub fn finished(&mut self, answer: Answer, now: Instant) -> Option<PaceChange> {
        let limited = match answer {
            Answer::Limited(delay) => Some(delay),
            Answer::Accepted(rtt) => {
                self.rtt = Some(self.rtt.map_or(rtt, |r| (r * 7 + rtt) / 8));
                None
            }
            _ => None,
        };
        let settle = self.settle_time();
        if limited.is_some() {
            self.limited_from.get_or_insert(now);
        }
        if limited.is_none() && !matches!(answer, Answer::Refused(_)) {
            self.limited_from = None;
            self.meter.record(now);
            // What the receiver takes at the new pace: answers to attempts started before the
            // change say nothing of it.
            if let Some(p) = self.pace.as_mut()
                && now.duration_since(p.changed) >= settle
            {
                p.taken_since += 1;
            }
        }
        if !matches!(answer, Answer::Refused(_)) {
            if self.recent.len() == RECENT {
                self.recent.pop_front();
            }
            self.recent.push_back(limited.is_some());
        }
        let goodput = self.meter.rate(now);
        let burst = self.burst();
        let change = match (limited, self.pace.as_mut()) {
            (Some(delay), None) if burst => {
                if goodput == 0.0 {
                    // Nothing taken: wait for the answers that may still come, then pause.
                    let refused_for = self
                        .limited_from
                        .map_or(Duration::ZERO, |from| now.duration_since(from));
                    if refused_for < PAUSE_AFTER {
                        return None;
                    }
                    self.recent.clear();
                    self.limited_from = None;
                    return Some(PaceChange::Pause(delay.unwrap_or(FLOOR_PAUSE)));
                }
                self.recent.clear();
                // What it takes now, over the last two round trips: over a longer span, a
                // sender that was speeding up took less at first, and a receiver with a burst
                // to give took more.
                let span = self.rtt.map_or(ENGAGE_SPAN, |r| (r * 2).max(ENGAGE_SPAN));
                let rate = (self.meter.rate_over(now, span) * ENGAGE_FRACTION).max(MIN_RATE);
                self.pace = Some(Pace {
                    rate,
                    changed: now,
                    taken_since: 0,
                    limited_since: 0,
                    grown: now,
                    found: None,
                    cut: false,
                    spiral: 0,
                });
                return Some(PaceChange::Engaged { rate });
            }
            (Some(delay), Some(p)) => {
                let elapsed = now.duration_since(p.changed);
                if elapsed >= settle {
                    p.limited_since += 1;
                }
                let first = !p.cut;
                let enough = if first { FIRST_MEASURE_COUNT } else { MEASURE_COUNT };
                let measured = elapsed > settle && (p.taken_since >= enough || elapsed >= MEASURE_MAX);
                if p.limited_since < CUT_AFTER {
                    None
                } else if !measured {
                    // Not measured yet since it was engaged: halve, as TCP does at the loss
                    // that ends its slow start, and measure from there.
                    if first {
                        let from = p.rate;
                        p.rate = (from / 2.0).max(MIN_RATE);
                        p.cut = true;
                        p.changed = now;
                        p.grown = now;
                        p.taken_since = 0;
                        p.limited_since = 0;
                        Some(PaceChange::Lowered { from, to: p.rate })
                    } else {
                        None
                    }
                } else {
                    // What it took since the change, or lately if that was long ago (a pace
                    // that has grown since took more towards its end).
                    let took = if elapsed > MEASURE_MAX {
                        self.meter.rate_over(now, RECENTLY)
                    } else {
                        f64::from(p.taken_since) / (elapsed - settle).as_secs_f64().max(f64::EPSILON)
                    };
                    let from = p.rate;
                    let to = from.min(took) * DECREASE;
                    // Cut again before it grew back to where the limit was found: 429s that
                    // do not follow the pace.
                    p.spiral = if p.found.is_some_and(|found| from < found) {
                        p.spiral + 1
                    } else {
                        0
                    };
                    if p.spiral >= SPIRAL {
                        self.pace = None;
                        self.recent.clear();
                        return Some(PaceChange::Released);
                    }
                    p.cut = true;
                    p.found = (p.taken_since >= MEASURE_COUNT || elapsed > MEASURE_MAX).then_some(took);
                    p.changed = now;
                    p.grown = now;
                    p.taken_since = 0;
                    p.limited_since = 0;
                    if to < MIN_RATE {
                        p.rate = MIN_RATE;
                        Some(PaceChange::Pause(delay.unwrap_or(FLOOR_PAUSE)))
                    } else {
                        p.rate = to;
                        Some(PaceChange::Lowered { from, to })
                    }
                }
            }
            _ => None,
        };
        if change.is_some() {
            return change;
        }
        self.grow(now, goodput)
    }

    /// Time passed without an answer: the pace grows, and is released if it no longer binds
    /// (a lane that waits for a token asks, as does the API).
    pub fn tick(&mut self, now: Instant) -> Option<PaceChange> {
        self.pace.as_ref()?;
        let goodput = self.meter.rate(now);
        self.grow(now, goodput)
    }

    fn grow(&mut self, now: Instant, goodput: f64) -> Option<PaceChange> {
        let p = self.pace.as_mut()?;
        let quiet = now.duration_since(p.changed);
        let dt = now.duration_since(p.grown).as_secs_f64();
        if !p.cut {
            // Slow start: doubling every two round trips until the first cut.
            let double = self.rtt.map_or(ENGAGE_SPAN, |r| (r * 2).max(ENGAGE_SPAN));
            p.rate *= 2f64.powf(dt / double.as_secs_f64());
        } else {
            // Fast while well below where the limit was found, then at a rate that doubles
            // every whole second since the last change.
            let growth = match p.found {
                Some(found) if p.rate >= FAST_BELOW * found => {
                    (GROWTH * 2f64.powi(quiet.as_secs().min(16) as i32)).min(GROWTH_MAX)
                }
                _ => FAST_GROWTH,
            };
            p.rate *= 1.0 + growth * dt;
        }
        p.grown = now;
        if quiet >= RELEASE_AFTER && p.rate > RELEASE_RATIO * goodput {
            self.pace = None;
            return Some(PaceChange::Released);
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const AFTER: Option<Duration> = Some(Duration::from_secs(1));

    /// A token bucket of `rate` a second holding at most `burst`, answering a request it takes
    /// after `service`, a 429 at once otherwise.
    struct Bucket {
        rate: f64,
        burst: f64,
        tokens: f64,
        last: Instant,
    }

    impl Bucket {
        fn new(rate: f64, burst: f64, now: Instant) -> Self {
            Self {
                rate,
                burst,
                tokens: burst,
                last: now,
            }
        }

        fn take(&mut self, now: Instant) -> bool {
            self.tokens = (self.tokens + now.duration_since(self.last).as_secs_f64() * self.rate).min(self.burst);
            self.last = now;
            if self.tokens >= 1.0 {
                self.tokens -= 1.0;
                true
            } else {
                false
            }
        }
    }

    /// Sends against `bucket` for `seconds` from `now`: as fast as `spin` a second while not
    /// pacing (a sender with many slots free), at the pace when pacing. Returns (taken,
    /// refused) per second.
    fn send(p: &mut Pacer, bucket: &mut Bucket, now: &mut Instant, seconds: u32, spin: f64) -> Vec<(u32, u32)> {
        let service = Duration::from_millis(10);
        let mut per_second = vec![(0, 0); seconds as usize];
        let start = *now;
        let end = start + Duration::from_secs(u64::from(seconds));
        // Answers due: (when, taken).
        let mut due: VecDeque<(Instant, bool)> = VecDeque::new();
        let mut next_send = *now;
        while *now < end {
            while due.front().is_some_and(|(at, _)| *at <= *now) {
                let (at, taken) = due.pop_front().expect("due");
                let answer = if taken {
                    Answer::Accepted(service)
                } else {
                    Answer::Limited(AFTER)
                };
                let _ = p.finished(answer, at);
                let second = at.duration_since(start).as_secs() as usize;
                if let Some(s) = per_second.get_mut(second) {
                    if taken { s.0 += 1 } else { s.1 += 1 }
                }
            }
            if *now >= next_send {
                let taken = bucket.take(*now);
                due.push_back((*now + if taken { service } else { Duration::ZERO }, taken));
                due.make_contiguous().sort_by_key(|(at, _)| *at);
                let rate = p.rate().unwrap_or(spin);
                next_send = *now + Duration::from_secs_f64(1.0 / rate);
            }
            *now += Duration::from_micros(100);
        }
        per_second
    }

    #[test]
    fn a_token_bucket_is_served_near_its_rate_with_few_refusals() {
        let mut now = Instant::now();
        let mut p = Pacer::new();
        let mut bucket = Bucket::new(200.0, 20.0, now);
        let seconds = send(&mut p, &mut bucket, &mut now, 30, 2_000.0);
        let (taken, refused) = seconds.iter().fold((0, 0), |(t, r), (a, b)| (t + a, r + b));
        // The first second: the burst, then the rate; and a few dozen refusals while the pace
        // is learned (from a sender that starts at 2,000 a second).
        assert!(seconds[0].1 <= 50, "first second {:?}", seconds[0]);
        assert!(
            f64::from(taken) >= 0.97 * (20.0 + 200.0 * 30.0),
            "{taken} taken of {}",
            20 + 200 * 30
        );
        assert!(
            f64::from(refused) <= 0.02 * f64::from(taken + refused),
            "{refused} refused of {}",
            taken + refused
        );
        let rate = p.rate().expect("still pacing");
        assert!((150.0..=230.0).contains(&rate), "{rate}");
    }

    #[test]
    fn a_raised_rate_limit_is_found_within_seconds() {
        let mut now = Instant::now();
        let mut p = Pacer::new();
        let mut bucket = Bucket::new(100.0, 10.0, now);
        send(&mut p, &mut bucket, &mut now, 10, 2_000.0);
        assert!(p.rate().is_some_and(|r| r < 110.0), "{:?}", p.rate());
        bucket.rate = 400.0;
        let seconds = send(&mut p, &mut bucket, &mut now, 10, 2_000.0);
        let at = seconds.iter().position(|(t, _)| *t >= 360).expect("found the new rate");
        assert!(at <= 6, "{seconds:?}");
    }

    #[test]
    fn scattered_429s_engage_nothing() {
        let mut now = Instant::now();
        let mut p = Pacer::new();
        // One answer in twenty is a 429, evenly spread, for a minute at 1,000 a second.
        for k in 0..60_000u32 {
            now += Duration::from_millis(1);
            let answer = if k % 20 == 0 {
                Answer::Limited(AFTER)
            } else {
                Answer::Accepted(Duration::from_millis(5))
            };
            assert_eq!(p.finished(answer, now), None);
        }
    }

    #[test]
    fn a_flaky_receiver_paced_by_a_chance_burst_is_released_before_it_is_slowed_much() {
        let mut now = Instant::now();
        let mut p = Pacer::new();
        let ms = Duration::from_millis(1);
        for _ in 0..1_000 {
            now += ms;
            let _ = p.finished(Answer::Accepted(Duration::from_millis(5)), now);
        }
        // A chance burst of ten 429s in a row engages a pace…
        for _ in 0..10 {
            now += ms;
            let _ = p.finished(Answer::Limited(AFTER), now);
        }
        let engaged = p.rate().expect("engaged");
        // …but one answer in twenty stays a 429 whatever the pace: the cuts do not stop them.
        let mut lowest = engaged;
        let released = (0..5_000).any(|k| {
            now += ms;
            let answer = if k % 20 == 0 {
                Answer::Limited(AFTER)
            } else {
                Answer::Accepted(Duration::from_millis(5))
            };
            let change = p.finished(answer, now);
            lowest = lowest.min(p.rate().unwrap_or(lowest));
            change == Some(PaceChange::Released)
        });
        assert!(released, "still paced at {:?}", p.rate());
        assert!(lowest >= 0.7 * engaged, "down to {lowest} from {engaged}");
    }

    #[test]
    fn a_pace_that_no_longer_binds_is_released() {
        let mut now = Instant::now();
        let mut p = Pacer::new();
        let mut bucket = Bucket::new(100.0, 10.0, now);
        send(&mut p, &mut bucket, &mut now, 5, 2_000.0);
        assert!(p.rate().is_some());
        // The backlog is gone: a request every 100 ms, all taken.
        let mut released = false;
        for _ in 0..100 {
            now += Duration::from_millis(100);
            released |= p.finished(Answer::Accepted(Duration::from_millis(10)), now) == Some(PaceChange::Released);
        }
        assert!(released && p.rate().is_none());
        // Nothing at all to send: released as time passes.
        send(&mut p, &mut bucket, &mut now, 5, 2_000.0);
        assert!(p.rate().is_some());
        assert_eq!(p.tick(now + Duration::from_secs(3)), Some(PaceChange::Released));
    }

    #[test]
    fn a_receiver_that_takes_nothing_pauses_the_target_for_its_delay() {
        let mut now = Instant::now();
        let mut p = Pacer::new();
        let wait = Duration::from_secs(30);
        // 429s only, one a millisecond: the first answers taken might still be on their way
        // for a while, then the target pauses, once.
        let mut changes = Vec::new();
        for _ in 0..300 {
            now += Duration::from_millis(1);
            changes.extend(p.finished(Answer::Limited(Some(wait)), now).map(|c| (now, c)));
        }
        let start = now - Duration::from_millis(300);
        assert_eq!(changes.len(), 1, "{changes:?}");
        let (at, change) = changes[0];
        assert_eq!(change, PaceChange::Pause(wait));
        assert!(
            at.duration_since(start) >= PAUSE_AFTER,
            "{:?}",
            at.duration_since(start)
        );
        assert_eq!(p.rate(), None);
    }
}
