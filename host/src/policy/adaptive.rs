//! The adaptive concurrency limit of one target: how many attempts may run at once, learned
//! from what the receiver shows while outboxd sends (a pure state machine: callers pass the
//! time in and apply the limit).
//!
//! The limit moves between 1 and the manifest's `concurrency` (the ceiling):
//! - **Slow start.** It starts at [`INITIAL`] (a few requests that hang cannot hold the target
//!   hostage: a hang says nothing until it times out) and doubles every window in which it was
//!   reached without a sign of trouble, so a healthy receiver is at the ceiling within a few
//!   round trips, and the receiver's unloaded round trip is measured before it is loaded.
//! - **Refusals cut it at once.** A refusal (503, a refused connection, a timeout) that
//!   comes as part of a burst (at least [`BURST_REFUSALS`] of the last [`RECENT`] answers, and
//!   at least [`BURST_SHARE`] of them) cuts the limit: halved the first time, else by
//!   [`DECREASE`], and never above the attempts still running (those the receiver is taking:
//!   the refused ones come back first). Another cut follows once a window has passed or the
//!   refusals since the last cut outnumber the new limit, whichever comes first: a receiver
//!   that refuses instantly has every slot above its capacity turn out refusals as fast as
//!   outboxd can send, and waiting a window per cut would multiply them.
//!   Refusals scattered at random among successes (a flaky receiver's occasional 503s, its hangs
//!   timing out) are no sign of overload: they make no burst and leave the limit alone; each
//!   waits out its own delay. The answers are not forgotten at a cut: a few refusals right after
//!   one are judged among the successes around them.
//! - **Latency cuts it too.** A window whose mean round trip exceeds [`LATENCY_CUT`] times the
//!   receiver's unloaded round trip (its baseline) cuts the limit by [`DECREASE`]: a receiver
//!   that queues rather than refuses is kept near the point where its latency starts to rise.
//! - **Growth is additive, and careful where it failed.** A window in which the limit was
//!   reached, with fewer than half a burst's share of refusals and the round trip under
//!   [`LATENCY_GROW`] times the baseline, raises it by one (doubles it, before the first cut). The level at which overload was last seen is remembered; the
//!   limit goes back up to it only as a probe, at most every [`PROBE_GAP_MIN`] (doubling up to
//!   [`PROBE_GAP_MAX`] while probes keep failing), so a receiver that admits N at once sees a
//!   few refused requests every few seconds, not every round trip: a probe fails on
//!   [`BURST_REFUSALS`] refusals, whatever the share. A probe that passes forgets the
//!   level: the receiver has grown, and the limit grows with it.
//! - **At the floor, the target pauses.** A burst of refusals at a limit of 1 means the receiver
//!   refuses even one request at a time (down, or limited without saying so by a 429): the
//!   controller asks for the target to pause for the receiver's requested delay.
//! - **429s are not its business.** A rate limit refuses one request as readily as many: the
//!   target's pace (`policy::pace`) answers them; the limit ignores them.
//!
//! A window's round trips are those of the attempts it started: an answer to an attempt
//! started at the previous level says nothing about this one. So a window stays open until it
//! has heard from as many of them as ran at once at its peak (at most [`WINDOW_MAX`]), however
//! long the round trips grow: its first answers alone would be those that queued the least.
//!
//! The baseline is the lowest window mean seen, and is measured afresh whenever a window ran at
//! most one attempt at a time (the receiver's unloaded latency by definition), so a receiver
//! that became slower for good is re-learned once the limit has come down to 1.
//!
//! Why this shape (docs/adaptive-delivery.md): Vector's adaptive request
//! concurrency (AIMD on a window of about one round trip, latency against a moving average)
//! grows by one every window and cuts by a tenth, which against a receiver that refuses
//! instantly above N keeps it one above N half the time, and the slot above N turns out
//! refusals as fast as it can send; Netflix's Gradient2 and Envoy's gradient controller track
//! latency only, with no notion of refusals. This controller keeps AIMD's shape, reacts to
//! refusal bursts at once, and probes past a known overload level on a timer.

use std::collections::VecDeque;
use std::time::Duration;

use tokio::time::Instant;

/// Multiplicative decrease on overload.
pub const DECREASE: f64 = 0.9;
/// Answers remembered to tell a burst of refusals from scattered ones.
pub const RECENT: usize = 20;
/// Refusals among the last [`RECENT`] answers that make a burst…
pub const BURST_REFUSALS: usize = 3;
/// …if they are also at least this share of them.
pub const BURST_SHARE: f64 = 0.5;
/// A window mean above this multiple of the baseline is overload.
pub const LATENCY_CUT: f64 = 1.5;
/// The limit grows only while the window mean is below this multiple of the baseline.
pub const LATENCY_GROW: f64 = 1.25;
/// Round trips within this much of the baseline are never overload, whatever the ratio: on
/// the sending host, attempts slow down a little as more run at once (its own CPU), which is
/// not the receiver queueing.
pub const LATENCY_SLACK: Duration = Duration::from_millis(5);
/// Shortest and longest window (a window is about two round trips).
pub const WINDOW_MIN: Duration = Duration::from_millis(20);
pub const WINDOW_MAX: Duration = Duration::from_secs(1);
/// Least and most time between probes past the level where overload was seen.
pub const PROBE_GAP_MIN: Duration = Duration::from_secs(1);
pub const PROBE_GAP_MAX: Duration = Duration::from_secs(5);
/// Where the limit starts (or the ceiling, if lower): a healthy receiver is at the ceiling
/// after a few round trips of slow start, an overloaded one is not flooded first, and a few
/// requests that hang cannot hold the target hostage.
pub const INITIAL: u32 = 4;
/// The pause at the floor when the receiver gave no delay.
pub const FLOOR_PAUSE: Duration = Duration::from_secs(1);

/// How a target's concurrency is set: `concurrency_mode` in its manifest.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ConcurrencyMode {
    /// Learned from the receiver, between 1 and the manifest's `concurrency` (the default).
    #[default]
    Adaptive,
    /// Always the manifest's `concurrency`.
    Fixed,
}

impl ConcurrencyMode {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Adaptive => "adaptive",
            Self::Fixed => "fixed",
        }
    }
}

impl std::str::FromStr for ConcurrencyMode {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "adaptive" => Ok(Self::Adaptive),
            "fixed" => Ok(Self::Fixed),
            other => Err(format!(
                "`concurrency_mode` must be `adaptive` or `fixed`, not `{other}`"
            )),
        }
    }
}

/// How an attempt ended, as the controller sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Answer {
    /// The receiver took it: a round-trip sample.
    Accepted(Duration),
    /// The receiver refused it as more than it can take at once (503, a refused connection, a
    /// timeout, a delay the plugin asked for), possibly asking for a delay.
    Refused(Option<Duration>),
    /// The receiver refused it as faster than its rate limit (429), possibly asking for a
    /// delay: a matter for the pace (`policy::pace`), not for the limit.
    Limited(Option<Duration>),
    /// Anything else (a 500, a permanent failure): says nothing about load.
    Other,
}

/// Why the limit went down.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cause {
    Refusals,
    Latency,
}

impl Cause {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Refusals => "refusals",
            Self::Latency => "latency",
        }
    }
}

/// What changed, for the caller to apply or tell.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    Decreased {
        from: u32,
        to: u32,
        cause: Cause,
    },
    Increased {
        from: u32,
        to: u32,
    },
    /// Refused even one at a time: pause the whole target this long.
    Pause(Duration),
}

/// The limit of one target and what it has learned.
#[derive(Debug, Clone)]
pub struct Controller {
    ceiling: u32,
    limit: u32,
    slow_start: bool,
    baseline: Option<Duration>,
    /// Started attempts not finished yet.
    in_flight: u32,
    window: Window,
    /// The last answers (true: refused).
    recent: VecDeque<bool>,
    last_cut: Option<Instant>,
    /// Refusals since the last cut.
    refused_since_cut: u32,
    /// The limit at which overload was last seen, until a probe past it passes.
    overload_at: Option<u32>,
    probe_gap: Duration,
    next_probe: Instant,
    /// A probe is running: the limit was raised to `overload_at` at this time.
    probing_since: Option<Instant>,
    /// Refusals since the probe started.
    refused_in_probe: u32,
}

#[derive(Debug, Clone)]
struct Window {
    start: Instant,
    /// Most attempts running at once during the window.
    peak: u32,
    accepted: u32,
    refused: u32,
    rtt_sum: Duration,
}

impl Window {
    fn new(now: Instant, in_flight: u32) -> Self {
        Self {
            start: now,
            peak: in_flight,
            accepted: 0,
            refused: 0,
            rtt_sum: Duration::ZERO,
        }
    }

    fn mean(&self) -> Option<Duration> {
        (self.accepted > 0).then(|| self.rtt_sum / self.accepted)
    }
}

impl Controller {
    /// A controller for a target of at most `ceiling` attempts at once, starting at
    /// [`INITIAL`].
    pub fn new(ceiling: u32, now: Instant) -> Self {
        Self {
            ceiling: ceiling.max(1),
            limit: INITIAL.min(ceiling.max(1)),
            slow_start: true,
            baseline: None,
            in_flight: 0,
            window: Window::new(now, 0),
            recent: VecDeque::with_capacity(RECENT),
            last_cut: None,
            refused_since_cut: 0,
            overload_at: None,
            probe_gap: PROBE_GAP_MIN,
            next_probe: now,
            probing_since: None,
            refused_in_probe: 0,
        }
    }

    /// Attempts that may run at once now.
    pub fn limit(&self) -> u32 {
        self.limit
    }

    pub fn ceiling(&self) -> u32 {
        self.ceiling
    }

    /// The receiver's unloaded round trip, as learned.
    pub fn baseline(&self) -> Option<Duration> {
        self.baseline
    }

    /// Takes a manifest's new ceiling (after a reload), keeping what was learned.
    pub fn set_ceiling(&mut self, ceiling: u32) {
        self.ceiling = ceiling.max(1);
        self.limit = self.limit.min(self.ceiling);
    }

    /// An attempt started.
    pub fn started(&mut self) {
        self.in_flight += 1;
        self.window.peak = self.window.peak.max(self.in_flight);
    }

    /// An attempt ended with `answer`.
    pub fn finished(&mut self, answer: Answer, now: Instant) -> Option<Change> {
        self.in_flight = self.in_flight.saturating_sub(1);
        let refused = matches!(answer, Answer::Refused(_));
        match answer {
            // Only attempts started in this window describe its limit: one started before
            // ran at the previous one, and would blur the step from one level to the next.
            Answer::Accepted(rtt) if now.checked_sub(rtt).is_none_or(|start| start >= self.window.start) => {
                self.window.accepted += 1;
                self.window.rtt_sum += rtt;
            }
            Answer::Accepted(_) => {}
            Answer::Refused(_) => {
                self.window.refused += 1;
                self.refused_since_cut += 1;
                if self.probing_since.is_some() {
                    self.refused_in_probe += 1;
                }
            }
            Answer::Limited(_) | Answer::Other => {}
        }
        if !matches!(answer, Answer::Limited(_) | Answer::Other) {
            if self.recent.len() == RECENT {
                self.recent.pop_front();
            }
            self.recent.push_back(refused);
        }
        // A probe past the level where the receiver was overloaded fails on a few refusals:
        // they are the answer it was looking for.
        let probe_failed = self.probing_since.is_some() && self.refused_in_probe >= BURST_REFUSALS as u32;
        if let Answer::Refused(delay) = answer
            && (self.burst() || probe_failed)
        {
            if self.limit == 1 {
                // Refused even one at a time: the whole target waits; the burst is spent.
                self.recent.clear();
                return Some(Change::Pause(delay.unwrap_or(FLOOR_PAUSE)));
            }
            if self.may_cut(now) {
                return Some(self.cut(Cause::Refusals, now));
            }
        }
        // A window closes once it is long enough and has heard from as many attempts it
        // started as ran at once at its peak (a round trip's worth): when the receiver queues,
        // round trips outgrow the window, and a window closed before its answers would never
        // see the latency that should cut the limit. Nor is its first answer enough: that one
        // is the attempt that found the fewest in service (the others started after it, each
        // queued behind more), and a window judged by it alone looks calm at a level the
        // receiver already queues at.
        let elapsed = now.duration_since(self.window.start);
        let heard = self.window.accepted + self.window.refused >= self.window.peak.max(1);
        if elapsed >= self.window_len() && (heard || elapsed >= WINDOW_MAX) {
            return self.close_window(now);
        }
        None
    }

    fn burst(&self) -> bool {
        let refused = self.recent.iter().filter(|r| **r).count();
        refused >= BURST_REFUSALS && refused as f64 >= BURST_SHARE * self.recent.len() as f64
    }

    /// About two round trips, within bounds.
    fn window_len(&self) -> Duration {
        self.baseline
            .map_or(WINDOW_MIN, |b| b * 2)
            .clamp(WINDOW_MIN, WINDOW_MAX)
    }

    /// Whether the last cut has had its chance to show: a window has passed, or more
    /// refusals than the limit came back since.
    fn may_cut(&self, now: Instant) -> bool {
        self.last_cut
            .is_none_or(|at| now.duration_since(at) >= self.window_len() || self.refused_since_cut > self.limit)
    }

    fn cut(&mut self, cause: Cause, now: Instant) -> Change {
        let from = self.limit;
        let by_factor = if self.slow_start {
            from / 2
        } else {
            ((f64::from(from) * DECREASE) as u32).min(from - 1)
        };
        // Refusals come back first: what is still running is what the receiver took.
        let taken = if cause == Cause::Refusals { self.in_flight } else { from };
        let to = by_factor.min(taken).max(1);
        self.slow_start = false;
        self.limit = to;
        self.last_cut = Some(now);
        self.refused_since_cut = 0;
        // A probe that ends in overload waits longer before the next one.
        if self.probing_since.take().is_some() || self.overload_at == Some(from) {
            self.probe_gap = (self.probe_gap * 2).min(PROBE_GAP_MAX);
        }
        self.overload_at = Some(from);
        self.next_probe = now + self.probe_gap;
        self.window = Window::new(now, self.in_flight);
        Change::Decreased { from, to, cause }
    }

    fn close_window(&mut self, now: Instant) -> Option<Change> {
        let window = std::mem::replace(&mut self.window, Window::new(now, self.in_flight));
        let mean = window.mean();
        if let Some(mean) = mean {
            self.baseline = Some(match self.baseline {
                // At most one at a time: the receiver's unloaded round trip, whatever it was.
                _ if window.peak <= 1 => mean,
                Some(b) => b.min(mean),
                None => mean,
            });
        }
        let baseline = self.baseline?;
        let mean = mean?;
        let above =
            |factor: f64| mean.as_secs_f64() > baseline.as_secs_f64() * factor && mean > baseline + LATENCY_SLACK;
        if above(LATENCY_CUT) && self.limit > 1 {
            return self.may_cut(now).then(|| self.cut(Cause::Latency, now));
        }
        let saturated = window.peak >= self.limit;
        // Scattered refusals do not stop the growth; a share of half a burst does.
        let answered = window.accepted + window.refused;
        let calm = f64::from(window.refused) < BURST_SHARE / 2.0 * f64::from(answered) && !above(LATENCY_GROW);
        if let Some(since) = self.probing_since
            && since <= window.start
            && calm
        {
            // A whole window at the level that was overloaded, and no trouble: it has grown.
            self.probing_since = None;
            self.overload_at = None;
            self.probe_gap = PROBE_GAP_MIN;
        }
        if !saturated || !calm || self.limit >= self.ceiling {
            return None;
        }
        let from = self.limit;
        let to = if self.slow_start {
            (from * 2).min(self.ceiling)
        } else {
            from + 1
        };
        match self.overload_at {
            Some(level) if to >= level => {
                if now < self.next_probe || self.probing_since.is_some() {
                    return None;
                }
                self.probing_since = Some(now);
                self.refused_in_probe = 0;
                self.limit = level.min(self.ceiling);
            }
            _ => self.limit = to,
        }
        (self.limit != from).then_some(Change::Increased { from, to: self.limit })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const RTT: Duration = Duration::from_millis(20);
    const AFTER: Option<Duration> = Some(Duration::from_secs(1));

    /// A receiver that takes `capacity` requests at once (each `RTT`) and refuses the rest at
    /// once: a slot above the capacity sends and is refused `SPIN` times in one round trip.
    const SPIN: u32 = 8;

    /// Runs `rounds` round trips against a receiver of `capacity(round)`; returns the limit
    /// after each round and the (accepted, refused) counts.
    fn against(
        c: &mut Controller,
        clock: &mut Instant,
        rounds: usize,
        capacity: impl Fn(usize) -> u32,
    ) -> (Vec<u32>, u32, u32) {
        let (mut limits, mut accepted, mut refused) = (Vec::new(), 0, 0);
        for round in 0..rounds {
            let limit = c.limit();
            let n = capacity(round);
            let admitted = limit.min(n);
            for _ in 0..admitted {
                c.started();
            }
            // The slots above the capacity spin through refusals while the others run, as
            // long as the limit leaves room above the admitted ones.
            for _ in 0..SPIN {
                for _ in 0..c.limit().saturating_sub(admitted) {
                    c.started();
                    refused += 1;
                    let _ = c.finished(Answer::Refused(AFTER), *clock);
                }
            }
            *clock += RTT;
            for _ in 0..admitted {
                accepted += 1;
                let _ = c.finished(Answer::Accepted(RTT), *clock);
            }
            limits.push(c.limit());
        }
        (limits, accepted, refused)
    }

    #[test]
    fn round_trips_longer_than_a_window_still_cut_the_limit() {
        let mut now = Instant::now();
        let mut c = Controller::new(16, now);
        let _ = against(&mut c, &mut now, 8, |_| 100);
        assert_eq!(c.limit(), 16);
        // The receiver now queues: every answer takes seven unloaded round trips, far longer
        // than a window (two of them).
        let slow = RTT * 7;
        let step = Duration::from_millis(1);
        let start = now;
        // (started, answered) of the running attempts; the round trips vary a little, so the
        // answers come spread out, as they do from a receiver working through a queue.
        // It is already working through a queue: attempts started one after the other before
        // now, so answers come all the time, each window's first ones from earlier windows.
        let mut running: Vec<(Instant, Instant)> = (1..=16u32)
            .map(|k| {
                c.started();
                let started = now - slow * k / 16;
                (started, started + slow)
            })
            .collect();
        let mut cuts = 0;
        for n in 0u32.. {
            if now.duration_since(start) > Duration::from_secs(2) {
                break;
            }
            while running.len() < c.limit() as usize {
                c.started();
                running.push((now, now + slow + step * (n * 7 % 13)));
            }
            now += step;
            running.sort_by_key(|(_, answered)| *answered);
            while running.first().is_some_and(|(_, answered)| *answered <= now) {
                let (started, _) = running.remove(0);
                if let Some(Change::Decreased { cause, .. }) = c.finished(Answer::Accepted(now - started), now) {
                    assert_eq!(cause, Cause::Latency);
                    cuts += 1;
                }
            }
        }
        // Answers keep coming all the time (each slot's in turn), yet each window waits for one
        // of its own attempts: every window sees the long round trips, and the limit keeps
        // coming down.
        assert!(cuts >= 3, "{cuts} cuts, limit {}", c.limit());
    }

    #[test]
    fn a_healthy_receiver_gets_the_ceiling_within_a_few_round_trips() {
        let mut now = Instant::now();
        let mut c = Controller::new(16, now);
        let (limits, _, refused) = against(&mut c, &mut now, 8, |_| 100);
        assert_eq!(refused, 0);
        assert_eq!(
            limits.last(),
            Some(&16),
            "doubling while nothing goes wrong: {limits:?}"
        );
        assert!(limits.iter().position(|l| *l == 16).unwrap() <= 7, "{limits:?}");
    }

    #[test]
    fn a_receiver_that_admits_n_at_once_is_held_near_n_and_probed_rarely() {
        for n in [2, 4, 8] {
            let mut now = Instant::now();
            let mut c = Controller::new(16, now);
            // Twenty simulated seconds.
            let (limits, accepted, refused) = against(&mut c, &mut now, 1_000, |_| n);
            let share = f64::from(refused) / f64::from(refused + accepted);
            assert!(share < 0.05, "n = {n}: {refused} refused of {}", refused + accepted);
            assert!(
                f64::from(accepted) >= 0.85 * f64::from(n) * 1_000.0,
                "n = {n}: {accepted} accepted of a capacity of {}",
                n * 1_000
            );
            let above = limits.iter().filter(|l| **l > n).count();
            assert!(
                above <= 50,
                "n = {n}: above the capacity in {above} of 1000 round trips"
            );
        }
    }

    #[test]
    fn scattered_refusals_leave_the_limit_alone() {
        let mut now = Instant::now();
        let mut c = Controller::new(16, now);
        // One answer in ten refused, spread evenly: a flaky receiver, not an overloaded one.
        let mut k = 0u32;
        for _ in 0..2_000 {
            let limit = c.limit();
            for _ in 0..limit {
                c.started();
            }
            now += RTT;
            for _ in 0..limit {
                k += 1;
                let answer = if k.is_multiple_of(10) {
                    Answer::Refused(AFTER)
                } else {
                    Answer::Accepted(RTT)
                };
                assert_eq!(
                    c.finished(answer, now)
                        .filter(|c| !matches!(c, Change::Increased { .. })),
                    None
                );
            }
        }
        assert_eq!(c.limit(), 16);
    }

    #[test]
    fn hangs_that_time_out_together_among_successes_leave_the_limit_alone() {
        let mut now = Instant::now();
        let mut c = Controller::new(16, now);
        against(&mut c, &mut now, 20, |_| 100);
        assert_eq!(c.limit(), 16);
        // One real overload first (twelve running, ten refused): a cut, after which the answers
        // around new refusals still count.
        for _ in 0..12 {
            c.started();
        }
        for _ in 0..10 {
            c.started();
            let _ = c.finished(Answer::Refused(None), now);
        }
        for _ in 0..12 {
            let _ = c.finished(Answer::Accepted(RTT), now);
        }
        assert_eq!(c.limit(), 8);
        let mut lowest = c.limit();
        for round in 0..500 {
            let limit = c.limit();
            for _ in 0..limit {
                c.started();
            }
            now += RTT;
            // Every tenth round, six requests that hung since long ago time out at once.
            if round % 10 == 0 {
                for _ in 0..6 {
                    c.started();
                    let _ = c.finished(Answer::Refused(None), now);
                }
            }
            for _ in 0..limit {
                let _ = c.finished(Answer::Accepted(RTT), now);
            }
            lowest = lowest.min(c.limit());
        }
        assert!(
            lowest >= 7,
            "a clump of timeouts among many successes is not overload: down to {lowest}"
        );
        assert!(c.limit() >= 14, "{}", c.limit());
    }

    #[test]
    fn when_capacity_halves_and_comes_back_the_limit_follows_both_ways() {
        let mut now = Instant::now();
        let mut c = Controller::new(16, now);
        against(&mut c, &mut now, 500, |_| 8);
        assert!((7..=9).contains(&c.limit()), "{}", c.limit());
        let (limits, _, _) = against(&mut c, &mut now, 500, |_| 4);
        let down = limits.iter().position(|l| *l <= 4).expect("the limit came down");
        assert!(
            RTT * down as u32 <= Duration::from_secs(1),
            "down in {:?}",
            RTT * down as u32
        );
        let (limits, _, _) = against(&mut c, &mut now, 1_000, |_| 8);
        let up = limits.iter().position(|l| *l >= 7).expect("the limit went back up");
        assert!(
            RTT * up as u32 <= Duration::from_secs(10),
            "up in {:?}",
            RTT * up as u32
        );
    }

    #[test]
    fn rising_latency_stops_the_growth_where_it_starts_to_rise() {
        let mut now = Instant::now();
        let mut c = Controller::new(64, now);
        // A receiver that queues: 20 ms alone, 5 ms more for every attempt beyond 4.
        let rtt_at = |limit: u32| RTT + Duration::from_millis(5) * limit.saturating_sub(4);
        let mut limits = Vec::new();
        for _ in 0..1_000 {
            let limit = c.limit();
            for _ in 0..limit {
                c.started();
            }
            now += rtt_at(limit);
            for _ in 0..limit {
                let _ = c.finished(Answer::Accepted(rtt_at(limit)), now);
            }
            limits.push(limit);
        }
        let settled = &limits[500..];
        assert!(
            settled.iter().all(|l| *l >= 4),
            "no lower than where latency starts to rise"
        );
        assert!(
            settled.iter().all(|l| rtt_at(*l) <= RTT * 2),
            "latency within twice the unloaded one: {settled:?}"
        );
    }

    /// A receiver whose round trip grows with the requests it is serving (20 ms up to 4 at
    /// once, 5 ms more for each beyond, as the benchmark's queueing receiver), fed as a lane
    /// does: every answer frees a slot that is filled `lag` later (a claim, the plugin's start).
    /// Returns the round trips of all requests and the highest limit reached.
    fn queueing(lag: Duration, jitter_ms: u64, secs: u64) -> (Vec<Duration>, u32) {
        let mut now = Instant::now();
        let end = now + Duration::from_secs(secs);
        let mut c = Controller::new(16, now);
        let mut running: Vec<(Instant, Duration)> = Vec::new();
        let mut pending: Vec<Instant> = Vec::new();
        let (mut rtts, mut highest, mut n) = (Vec::new(), c.limit(), 0u64);
        while now < end {
            // Slots free under the limit are filled `lag` after they opened.
            let free = (c.limit() as usize).saturating_sub(running.len() + pending.len());
            pending.extend(std::iter::repeat_n(now + lag, free));
            pending.sort();
            while pending.first().is_some_and(|at| *at <= now) {
                pending.remove(0);
                if running.len() >= c.limit() as usize {
                    continue;
                }
                n += 1;
                let serving = running.len() + 1;
                let rtt = RTT
                    + Duration::from_millis(5) * serving.saturating_sub(4) as u32
                    + Duration::from_millis(n * 7919 % (jitter_ms + 1));
                c.started();
                running.push((now + rtt, rtt));
            }
            running.sort_by_key(|(at, _)| *at);
            let next = running
                .first()
                .map(|(at, _)| *at)
                .into_iter()
                .chain(pending.first().copied())
                .min();
            now = next.unwrap_or(now + Duration::from_millis(1)).max(now);
            while running.first().is_some_and(|(at, _)| *at <= now) {
                let (_, rtt) = running.remove(0);
                rtts.push(rtt);
                let _ = c.finished(Answer::Accepted(rtt), now);
                highest = highest.max(c.limit());
            }
        }
        (rtts, highest)
    }

    #[test]
    fn a_queueing_receiver_is_never_pushed_past_twice_its_unloaded_latency() {
        for (lag_ms, jitter_ms) in [(0, 0), (1, 2), (3, 3), (5, 4), (8, 2)] {
            let (mut rtts, highest) = queueing(Duration::from_millis(lag_ms), jitter_ms, 10);
            rtts.sort();
            let p99 = rtts[rtts.len() * 99 / 100];
            assert!(
                p99 <= RTT * 2 + Duration::from_millis(jitter_ms),
                "lag {lag_ms} ms, jitter {jitter_ms} ms: p99 {p99:?}, highest limit {highest}"
            );
            assert!(
                highest <= 8,
                "lag {lag_ms} ms, jitter {jitter_ms} ms: the limit reached {highest}"
            );
        }
    }

    #[test]
    fn refused_even_one_at_a_time_pauses_the_target_for_the_requested_delay() {
        let now = Instant::now();
        let mut c = Controller::new(16, now);
        let wait = Duration::from_secs(2);
        let mut changes = Vec::new();
        // One request at a time, every one refused (a rate limit whose bucket is empty).
        for _ in 0..6 {
            c.started();
            changes.extend(c.finished(Answer::Refused(Some(wait)), now));
        }
        assert_eq!(
            changes,
            [
                Change::Decreased {
                    from: INITIAL,
                    to: 1,
                    cause: Cause::Refusals
                },
                Change::Pause(wait)
            ],
            "down to one, then the target waits"
        );
        assert_eq!(c.limit(), 1);
    }

    #[test]
    fn a_slower_receiver_is_relearned_once_the_limit_is_down_to_one() {
        let mut now = Instant::now();
        let mut c = Controller::new(8, now);
        against(&mut c, &mut now, 20, |_| 100);
        assert_eq!(c.limit(), 8);
        // From now on the receiver takes three times as long, whatever the load.
        let slow = RTT * 3;
        let mut lowest = 8;
        for _ in 0..400 {
            let limit = c.limit();
            lowest = lowest.min(limit);
            for _ in 0..limit {
                c.started();
            }
            now += slow;
            for _ in 0..limit {
                let _ = c.finished(Answer::Accepted(slow), now);
            }
        }
        assert_eq!(lowest, 1, "the latency looked like overload at first");
        assert_eq!(c.baseline(), Some(slow), "re-measured");
        assert_eq!(c.limit(), 8, "and grown back: the latency does not depend on the load");
    }

    #[test]
    fn latency_within_the_slack_is_never_overload() {
        let mut now = Instant::now();
        let mut c = Controller::new(16, now);
        // A fast receiver whose round trips triple under load (the sending host's CPU).
        for _ in 0..200 {
            let limit = c.limit();
            for _ in 0..limit {
                c.started();
            }
            let rtt = Duration::from_micros(300) * limit.min(10);
            now += rtt.max(Duration::from_millis(1));
            for _ in 0..limit {
                let _ = c.finished(Answer::Accepted(rtt), now);
            }
        }
        assert_eq!(c.limit(), 16);
    }
}
