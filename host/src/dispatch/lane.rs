//! A lane: the loop that serves one target. Each turn it takes a permit of the target's
//! concurrency, asks the target's circuit breaker, takes rate-limit tokens, takes slots of the
//! shared priority pool (not for `slow` targets), claims due deliveries under a lease and
//! starts their attempts; with nothing due it sleeps until a wake-up, the next due time or
//! the poll interval. Lanes are independent: a waiting lane holds up no other.
//!
//! A plain lane reads ahead: it claims up to [`READ_AHEAD`] times its concurrency limit beyond
//! the permits that are free (a fast receiver's, up to that many times its ceiling while its
//! limit is cut: `Flow::read_ahead`), and the claimed deliveries wait in `ready` for a
//! permit. Without that, a busy lane claimed for each permit as it freed (one or two
//! deliveries per claim transaction); with it, claims carry about four times a lane's
//! concurrency each. What was read ahead is given back (`leases::give_back`) when the breaker
//! stops the lane and when the lane ends, unstarted and uncounted, and when the target is
//! paused by hand: at once when the pause was made through this process (`Outbox::pauses`),
//! else within a poll interval.
//! A lane that knows its target paused does not wake for new work (every ingest announces
//! some, and it would claim nothing each time): it looks again when told of a resumption
//! (through this process, or announced by another: `store::Wakeups`) or after a poll interval.
//! Batched lanes (a batch is claimed whole), rate-limited ones
//! (a token per claimed delivery) and slow ones (whose attempts take long, so claims are rare
//! anyway, and a hung receiver would hold the read-ahead hostage) do not read ahead.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Notify;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::breakers::Breakers;
use super::flow::{Flow, GatePermit};
use super::leases;
use super::limiter::Limiter;
use super::pool::{PoolPermit, PriorityPool};
use crate::domain::{Millis, TargetClass, now_ms};
use crate::policy::breaker::Admit;
use crate::store::{ClaimRequest, Claimed, Store};
use crate::targets::manifest::TargetSpec;

/// How far a plain lane reads ahead, in multiples of its concurrency. A lane whose read-ahead
/// runs dry waits for its next claim, which may queue behind a settle's fsync on the one
/// writer, and every claim costs the database a scan of the target's queue head and a
/// transaction: with twice its concurrency in hand, a busy lane claimed half as often as with
/// one (the benchmark's drain: about 30 % more deliveries/s); with four times, half as often
/// again (PostgreSQL: write transactions per delivery 0.040 -> 0.023, the drain about 10 %
/// faster on both stores; docs/performance.md, ninth session).
const READ_AHEAD: usize = 4;
/// Shortest pause of an idle lane, so that a lane never spins.
const MIN_IDLE: Duration = Duration::from_millis(5);

/// What a lane holds for one attempt (one delivery, or one batch): released on drop.
pub(super) struct Slot {
    _target: GatePermit,
    _pool: Option<PoolPermit>,
}

/// Starts an attempt of claimed deliveries, holding the slot until the attempt ends.
pub(super) type Start = Box<dyn Fn(Vec<Claimed>, Slot) + Send + Sync>;

/// What a lane works with.
pub(super) struct LaneContext {
    pub store: Arc<dyn Store>,
    pub owner: String,
    pub breakers: Arc<Breakers>,
    pub pool: Arc<PriorityPool>,
    /// Notified when due work appears.
    pub wake: Arc<Notify>,
    /// Changes when a target is paused or resumed through this process.
    pub pauses: tokio::sync::watch::Receiver<u64>,
    pub poll_interval: Duration,
    pub lease_margin: Duration,
}

/// What one turn of the loop leads to.
enum Next {
    /// Look for work again at once.
    Again,
    /// Sleep until a wake-up, or this long at most.
    Idle(Duration),
    /// The lane is stopping.
    Stop,
}

/// One target's loop and what it keeps between turns.
pub(super) struct Lane {
    cx: LaneContext,
    spec: TargetSpec,
    start: Start,
    /// The target's limit in force, and its retry budget.
    flow: Arc<Flow>,
    /// The lease of a claim: the target's deadline plus the margin.
    lease: Duration,
    batched: bool,
    bucket: Option<Limiter>,
    /// How many deliveries to claim beyond the free permits, per permit of the limit.
    ahead: usize,
    /// Claimed, not started yet.
    ready: VecDeque<Claimed>,
    /// Whether the target was paused by hand when last asked (a claim that found work says
    /// it was not).
    paused: bool,
    /// When that was.
    pause_checked: Instant,
    /// Told of a pause or resumption since: ask the store again at once.
    pause_told: bool,
    /// This turn follows a wake-up for new work.
    woken: bool,
}

impl Lane {
    pub(super) fn new(cx: LaneContext, spec: TargetSpec, flow: Arc<Flow>, start: Start) -> Self {
        let batched = spec.class == TargetClass::Batched;
        let bucket = spec.rate_per_sec.map(|r| Limiter::new(&cx.store, r));
        let ahead = if batched || bucket.is_some() || spec.class == TargetClass::Slow {
            0
        } else {
            READ_AHEAD
        };
        Self {
            flow,
            lease: spec.timeout + cx.lease_margin,
            batched,
            bucket,
            ahead,
            ready: VecDeque::new(),
            paused: false,
            pause_checked: Instant::now(),
            pause_told: true, // a lane starts by asking
            woken: true,
            cx,
            spec,
            start,
        }
    }

    /// Serves the target until `token` is cancelled, then gives back what it read ahead.
    pub(super) async fn run(mut self, token: CancellationToken) {
        tracing::debug!(target = %self.spec.name, "lane started");
        let wake = Arc::clone(&self.cx.wake);
        while !token.is_cancelled() {
            // Arm the wake-up before looking for work, so an ingest in between is not missed.
            let woken = wake.notified();
            tokio::pin!(woken);
            woken.as_mut().enable();
            match self.turn(&token).await {
                Next::Again => {}
                Next::Stop => break,
                // Paused: new work is no reason to look, a pause or resumption is.
                Next::Idle(wait) if self.paused => {
                    let pauses = &mut self.cx.pauses;
                    tokio::select! {
                        Ok(()) = pauses.changed() => self.pause_told = true,
                        _ = tokio::time::sleep(wait) => {}
                        _ = token.cancelled() => {}
                    }
                }
                Next::Idle(wait) => tokio::select! {
                    _ = woken => self.woken = true,
                    _ = tokio::time::sleep(wait) => {}
                    _ = token.cancelled() => {}
                },
            }
        }
        self.give_back().await;
        tracing::debug!(target = %self.spec.name, "lane stopped");
    }

    /// One turn: permits, breaker, tokens, pool slots, claim, start.
    async fn turn(&mut self, token: &CancellationToken) -> Next {
        let gate = Arc::clone(self.flow.gate());
        let first = tokio::select! {
            p = gate.acquire() => match p { Some(p) => p, None => return Next::Stop },
            _ = token.cancelled() => return Next::Stop,
        };
        let admit = self
            .cx
            .breakers
            .with(self.spec.name.as_str(), self.spec.breaker, |b| b.admit(Instant::now()));
        let probe = match admit {
            Admit::Any => false,
            Admit::Probe => true,
            Admit::WaitUntil(until) => {
                drop(first);
                self.give_back().await;
                tokio::select! {
                    _ = tokio::time::sleep_until(until) => {}
                    _ = token.cancelled() => {}
                }
                return Next::Again;
            }
            Admit::Hold => {
                drop(first);
                self.give_back().await;
                return Next::Idle(self.cx.poll_interval);
            }
        };
        let mut held = vec![first];
        if !probe && !self.batched {
            while let Some(p) = gate.try_acquire() {
                held.push(p);
            }
        }
        // Deliveries wanted: one per permit, or a whole batch on one permit.
        let mut want = if probe {
            1
        } else if self.batched {
            self.spec.max_batch as usize
        } else {
            held.len()
        };
        if let Some(bucket) = self.bucket.as_mut() {
            match bucket.take(self.cx.store.as_ref(), &self.spec.name, want).await {
                Ok(granted) => want = granted,
                Err(wait) => {
                    drop(held);
                    tokio::select! {
                        _ = tokio::time::sleep(wait.max(MIN_IDLE)) => {}
                        _ = token.cancelled() => {}
                    }
                    return Next::Again;
                }
            }
            if !self.batched {
                held.truncate(want);
            }
        }
        // The pace of a receiver that limits its rate: one token per call.
        let calls = if self.batched { 1 } else { want };
        let paced = match self.flow.pace(calls, Instant::now()) {
            Ok(granted) => granted,
            Err(wait) => {
                drop(held);
                self.give_back_tokens(want).await;
                tokio::select! {
                    _ = tokio::time::sleep(wait.max(MIN_IDLE)) => {}
                    _ = token.cancelled() => {}
                }
                return Next::Again;
            }
        };
        if !self.batched && paced < want {
            self.give_back_tokens(want - paced).await;
            want = paced;
            held.truncate(want);
        }
        let mut slots = self.pool_slots(held, token).await;
        if slots.is_empty() {
            self.flow.give_back_pace(paced);
            return Next::Stop; // cancelled while waiting for the pool
        }
        if !self.batched {
            self.flow.give_back_pace(want.saturating_sub(slots.len()));
            want = want.min(slots.len());
        }

        // Pace tokens of calls that did not start (a batch is one call).
        let batched = self.batched;
        let unstarted_calls = move |started: usize| {
            if batched {
                usize::from(started == 0)
            } else {
                want.saturating_sub(started)
            }
        };
        let started = match self.claim_and_start(&mut slots, want, probe, token).await {
            Some(started) => started,
            None => {
                drop(slots);
                self.flow.give_back_pace(unstarted_calls(0));
                self.give_back_tokens(want).await;
                return Next::Idle(self.cx.poll_interval);
            }
        };
        self.flow.give_back_pace(unstarted_calls(started));
        if probe {
            self.cx.breakers.with(self.spec.name.as_str(), self.spec.breaker, |b| {
                b.probe_started(started > 0)
            });
        }
        self.give_back_tokens(want.saturating_sub(started)).await;
        drop(slots);
        if started > 0 && !probe {
            return Next::Again; // there may be more due work: claim again as permits free up
        }
        let wait = match self.cx.store.next_due(&self.spec.name).await {
            Ok(Some(due)) => Duration::from_millis(due.saturating_sub(now_ms()).max(0) as u64),
            Ok(None) => {
                // Nothing pending, or paused: which one decides whether wake-ups for new work
                // reach the lane. Asked when one found nothing (a poll finding nothing leaves
                // the last answer standing, so an idle lane's poll costs no more).
                if std::mem::take(&mut self.woken) {
                    self.paused().await;
                }
                self.cx.poll_interval
            }
            Err(_) => self.cx.poll_interval,
        };
        Next::Idle(wait.clamp(MIN_IDLE, self.cx.poll_interval))
    }

    /// Slots of the shared pool for the permits held: critical lanes are served first when
    /// it is saturated. Waits for the first; takes the others only if free. Empty when
    /// cancelled while waiting.
    async fn pool_slots(&self, held: Vec<GatePermit>, token: &CancellationToken) -> Vec<Slot> {
        let mut slots = Vec::with_capacity(held.len());
        for permit in held {
            let pool = if self.spec.class == TargetClass::Slow {
                None
            } else if slots.is_empty() {
                tokio::select! {
                    p = self.cx.pool.acquire(self.spec.class.priority()) => Some(p),
                    _ = token.cancelled() => break,
                }
            } else {
                match self.cx.pool.try_acquire() {
                    Some(p) => Some(p),
                    None => break,
                }
            };
            slots.push(Slot {
                _target: permit,
                _pool: pool,
            });
        }
        slots
    }

    /// Claims what the read-ahead cannot cover (and reads ahead again), then starts one
    /// attempt per slot (a batched lane: one batch, after lingering for it to fill). Returns
    /// how many deliveries started; `None` when the claim failed with nothing in hand.
    async fn claim_and_start(
        &mut self,
        slots: &mut Vec<Slot>,
        want: usize,
        probe: bool,
        token: &CancellationToken,
    ) -> Option<usize> {
        let mut claimed = Vec::new();
        if self.ready.len() < want {
            // A paced target reads no further ahead than its tokens: what it claims waits for
            // them under a lease.
            let ahead = if probe || self.flow.paced() {
                0
            } else {
                self.flow.read_ahead(self.ahead)
            };
            let ask = want - self.ready.len() + ahead;
            match self.claim(ask).await {
                Ok(c) => {
                    if !c.is_empty() {
                        self.paused = false;
                        self.pause_checked = Instant::now();
                    }
                    claimed = c;
                }
                Err(()) if self.ready.is_empty() => return None,
                Err(()) => {}
            }
        }
        if self.batched {
            if !claimed.is_empty() && claimed.len() < want && !probe {
                self.linger(&mut claimed, want, token).await;
            }
            let (batch, held) = self.budgeted(claimed, probe);
            let n = batch.len();
            if n > 0 {
                (self.start)(batch, slots.swap_remove(0));
            }
            self.hold(held).await;
            return Some(n);
        }
        self.ready.extend(claimed);
        if !self.ready.is_empty() && self.paused().await {
            self.give_back().await;
            return Some(0);
        }
        let mut held = Vec::new();
        let mut n = 0;
        while !slots.is_empty()
            && let Some(delivery) = self.ready.pop_front()
        {
            match self.admit(&delivery, probe) {
                Ok(()) => {
                    (self.start)(vec![delivery], slots.pop().expect("not empty"));
                    n += 1;
                }
                Err(wait) => held.push((delivery, wait)),
            }
        }
        self.hold(held).await;
        Some(n)
    }

    /// Whether the target is paused by hand, for a lane about to start what it read ahead
    /// (its claims say so themselves) or about to sleep with nothing due: asked of the store
    /// at once when told of a pause or resumption, else at most once per poll interval (the
    /// last answer stands in between).
    async fn paused(&mut self) -> bool {
        let told = std::mem::take(&mut self.pause_told) || self.cx.pauses.has_changed().unwrap_or(false);
        if !told && self.pause_checked.elapsed() < self.cx.poll_interval {
            return self.paused;
        }
        self.cx.pauses.mark_unchanged();
        self.pause_checked = Instant::now();
        self.paused = match self.cx.store.paused_targets().await {
            Ok(paused) => paused.iter().any(|n| n == self.spec.name.as_str()),
            Err(e) => {
                tracing::warn!(target = %self.spec.name, error = %e, "cannot tell whether the target is paused");
                false
            }
        };
        self.paused
    }

    /// Asks the retry budget whether `delivery` may start now (a first attempt always may).
    fn admit(&self, delivery: &Claimed, probe: bool) -> Result<(), Duration> {
        self.flow.admit(delivery.attempt > 1, !probe, Instant::now())
    }

    /// The deliveries of a batch the retry budget lets start, and those it holds back.
    fn budgeted(&self, claimed: Vec<Claimed>, probe: bool) -> (Vec<Claimed>, Vec<(Claimed, Duration)>) {
        let mut batch = Vec::with_capacity(claimed.len());
        let mut held = Vec::new();
        for delivery in claimed {
            match self.admit(&delivery, probe) {
                Ok(()) => batch.push(delivery),
                Err(wait) => held.push((delivery, wait)),
            }
        }
        (batch, held)
    }

    /// Gives retries the budget held back to the store to wait, uncounted, until it has room
    /// for them again. If the store fails they stay in hand and are asked about again.
    async fn hold(&mut self, held: Vec<(Claimed, Duration)>) {
        let Some(wait) = held.iter().map(|(_, w)| *w).max() else {
            return;
        };
        let held: VecDeque<Claimed> = held.into_iter().map(|(d, _)| d).collect();
        let until = now_ms() + wait.as_millis() as Millis;
        let kept = leases::defer(self.cx.store.as_ref(), &self.cx.owner, &self.spec.name, held, until).await;
        self.ready.extend(kept);
    }

    async fn claim(&self, want: usize) -> Result<Vec<Claimed>, ()> {
        let now = now_ms();
        self.cx
            .store
            .claim(ClaimRequest {
                target: self.spec.name.clone(),
                limit: want,
                owner: self.cx.owner.clone(),
                now,
                lease_ms: self.lease.as_millis() as Millis,
                ordered: self.spec.ordered,
            })
            .await
            .map_err(|e| tracing::error!(target = %self.spec.name, error = %e, "claim failed; retrying"))
    }

    /// Batched targets: with fewer than a full batch claimed, keeps claiming until the batch
    /// is full or the linger time since the first claim is over.
    async fn linger(&self, claimed: &mut Vec<Claimed>, want: usize, token: &CancellationToken) {
        let deadline = Instant::now() + self.spec.linger;
        while claimed.len() < want {
            let woken = self.cx.wake.notified();
            tokio::pin!(woken);
            woken.as_mut().enable();
            let now = Instant::now();
            if now >= deadline {
                break;
            }
            let wait = (deadline - now).min(self.cx.poll_interval);
            tokio::select! {
                _ = woken => {}
                _ = tokio::time::sleep(wait) => {}
                _ = token.cancelled() => break,
            }
            if let Ok(more) = self.claim(want - claimed.len()).await {
                claimed.extend(more);
            }
        }
    }

    async fn give_back(&mut self) {
        leases::give_back(
            self.cx.store.as_ref(),
            &self.cx.owner,
            &self.spec.name,
            &mut self.ready,
            &self.cx.wake,
        )
        .await;
    }

    async fn give_back_tokens(&mut self, n: usize) {
        if let Some(bucket) = self.bucket.as_mut() {
            bucket.give_back(self.cx.store.as_ref(), &self.spec.name, n).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use tokio::task::JoinHandle;

    use super::*;
    use crate::dispatch::flow::Flows;
    use crate::dispatch::testing::{FakeStore, claimed, spec};
    use crate::policy::breaker::Signal;

    type Started = Arc<Mutex<Vec<(Vec<Claimed>, Slot)>>>;

    /// The lane's own mechanics, with a limit that does not move (the adaptive limit has
    /// tests of its own, and its lane only sees the gate).
    const FIXED_2: &str = "concurrency = 2\nconcurrency_mode = \"fixed\"";

    /// A lane over a fake store whose attempts never end until the test drops their slots.
    struct Harness {
        store: Arc<FakeStore>,
        breakers: Arc<Breakers>,
        wake: Arc<Notify>,
        started: Started,
        spec: TargetSpec,
        flow: Arc<Flow>,
        stop: CancellationToken,
        task: JoinHandle<()>,
        pauses: tokio::sync::watch::Sender<u64>,
    }

    impl Harness {
        fn start(manifest: &str, due: i64) -> Self {
            let store = Arc::new(FakeStore::default());
            store.with(|s| s.due = (1..=due).map(|id| claimed(id, "crm", "order.created", 1)).collect());
            let breakers: Arc<Breakers> = Arc::default();
            let wake: Arc<Notify> = Arc::default();
            let started: Started = Arc::default();
            let spec = spec("crm", manifest);
            let pauses = tokio::sync::watch::Sender::new(0);
            let cx = LaneContext {
                pauses: pauses.subscribe(),
                store: Arc::clone(&store) as Arc<dyn Store>,
                owner: "me".into(),
                breakers: Arc::clone(&breakers),
                pool: PriorityPool::new(64),
                wake: Arc::clone(&wake),
                poll_interval: Duration::from_millis(250),
                lease_margin: Duration::from_secs(30),
            };
            let record = Arc::clone(&started);
            let start: Start = Box::new(move |d, slot| record.lock().unwrap().push((d, slot)));
            let stop = CancellationToken::new();
            let flow = Arc::new(Flows::default()).get(&spec);
            let task = tokio::spawn(Lane::new(cx, spec.clone(), Arc::clone(&flow), start).run(stop.clone()));
            Self {
                store,
                breakers,
                wake,
                started,
                spec,
                flow,
                stop,
                task,
                pauses,
            }
        }

        /// The attempts running now, by delivery id.
        fn running(&self) -> Vec<Vec<i64>> {
            let started = self.started.lock().unwrap();
            started
                .iter()
                .map(|(d, _)| d.iter().map(|c| c.delivery_id).collect())
                .collect()
        }

        /// Ends every running attempt.
        fn finish_all(&self) {
            self.started.lock().unwrap().clear();
        }

        fn claims(&self) -> Vec<usize> {
            self.store.with(|s| s.claims.clone())
        }

        async fn stop(self) -> Arc<FakeStore> {
            self.stop.cancel();
            self.task.await.unwrap();
            self.store
        }
    }

    async fn settle() {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }

    #[tokio::test(start_paused = true)]
    async fn a_busy_lane_reads_ahead_four_times_its_concurrency_and_runs_one_attempt_per_permit() {
        let h = Harness::start(FIXED_2, 14);
        settle().await;
        assert_eq!(h.running(), [[1], [2]], "one attempt per permit");
        assert_eq!(h.claims(), [10], "2 for the permits and 8 ahead, in one claim");
        for next in [[[3], [4]], [[5], [6]], [[7], [8]], [[9], [10]]] {
            h.finish_all();
            settle().await;
            assert_eq!(h.running(), next, "from what was read ahead");
        }
        assert_eq!(h.claims(), [10], "no claim while the read-ahead lasts");
        h.finish_all();
        settle().await;
        assert_eq!(h.running(), [[11], [12]]);
        assert_eq!(
            h.claims(),
            [10, 10],
            "then one claim for the permits and the next read-ahead"
        );
        let store = h.stop().await;
        assert_eq!(
            store.with(|s| s.unclaimed.clone()),
            [(13, 1), (14, 1)],
            "a stopping lane gives back what it read ahead, unstarted"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_paused_target_gives_back_its_read_ahead_and_starts_nothing_more() {
        let h = Harness::start(FIXED_2, 10);
        settle().await;
        assert_eq!(h.running(), [[1], [2]]);
        // Paused through this process: the lane hears of it at once.
        h.store.with(|s| s.paused = vec!["crm".into()]);
        h.pauses.send_modify(|n| *n += 1);
        h.finish_all();
        settle().await;
        assert!(h.running().is_empty(), "a paused lane starts nothing it read ahead");
        let given_back = |store: &FakeStore| store.with(|s| s.unclaimed.iter().map(|(id, _)| *id).collect::<Vec<_>>());
        assert_eq!(given_back(&h.store), [3, 4, 5, 6, 7, 8, 9, 10]);
        tokio::time::sleep(Duration::from_secs(2)).await;
        assert!(h.running().is_empty(), "and claims nothing while paused");
        h.stop().await;

        // Paused by another process (the CLI, another host): found within a poll interval.
        let h = Harness::start(FIXED_2, 10);
        settle().await;
        h.store.with(|s| s.paused = vec!["crm".into()]);
        tokio::time::sleep(Duration::from_millis(260)).await;
        h.finish_all();
        settle().await;
        assert!(h.running().is_empty(), "{:?}", h.running());
        assert_eq!(given_back(&h.store), [3, 4, 5, 6, 7, 8, 9, 10]);
        h.stop().await;
    }

    #[tokio::test(start_paused = true)]
    async fn a_paused_lane_sleeps_through_new_work_and_wakes_on_its_resumption() {
        let h = Harness::start(FIXED_2, 0);
        h.store.with(|s| s.paused = vec!["crm".into()]);
        h.pauses.send_modify(|n| *n += 1);
        settle().await;
        h.store
            .with(|s| s.due.extend((1..=3).map(|id| claimed(id, "crm", "order.created", 1))));
        let asleep = h.claims().len();
        for _ in 0..20 {
            h.wake.notify_waiters();
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        assert_eq!(h.claims().len(), asleep, "new work does not wake a paused lane");
        tokio::time::sleep(Duration::from_millis(250)).await;
        assert_eq!(h.claims().len(), asleep + 1, "it looks once per poll interval");
        assert!(h.running().is_empty());

        // Resumed (through this process, or announced by another): it claims at once.
        h.store.with(|s| s.paused.clear());
        h.pauses.send_modify(|n| *n += 1);
        settle().await;
        assert_eq!(h.running(), [[1], [2]], "a resumption wakes the lane");
        h.finish_all();
        settle().await;
        assert_eq!(h.running(), [[3]]);
        // Not paused any more: new work wakes it again.
        h.finish_all();
        h.store.with(|s| s.due.push_back(claimed(4, "crm", "order.created", 1)));
        h.wake.notify_waiters();
        settle().await;
        assert_eq!(h.running(), [[4]]);
        h.stop().await;
    }

    #[tokio::test(start_paused = true)]
    async fn an_open_breaker_gives_back_the_read_ahead_and_starts_nothing_until_its_cool_down() {
        let h = Harness::start(
            "concurrency = 2\nconcurrency_mode = \"fixed\"\n[breaker]\nfailures = 1\ncooldown_ms = 10000",
            14,
        );
        settle().await;
        assert_eq!(h.running(), [[1], [2]]);
        h.breakers
            .with("crm", h.spec.breaker, |b| b.record(Signal::Failure, Instant::now()));
        h.finish_all();
        settle().await;
        assert!(h.running().is_empty(), "an open breaker starts nothing");
        assert_eq!(
            h.store
                .with(|s| s.unclaimed.iter().map(|(id, _)| *id).collect::<Vec<_>>()),
            [3, 4, 5, 6, 7, 8, 9, 10],
            "the read-ahead goes back, uncounted, for another worker or later"
        );
        tokio::time::sleep(Duration::from_millis(9_000)).await;
        assert!(h.running().is_empty(), "still cooling down");
        tokio::time::sleep(Duration::from_millis(1_100)).await;
        assert_eq!(h.running().len(), 1, "one probe after the cool-down");
        assert_eq!(h.running()[0].len(), 1);
        h.stop().await;
    }

    #[tokio::test(start_paused = true)]
    async fn an_idle_lane_claims_again_on_a_wake_up_or_after_its_poll_interval() {
        let h = Harness::start(FIXED_2, 0);
        settle().await;
        let idle = h.claims().len();
        assert_eq!(idle, 1);
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert_eq!(h.claims().len(), idle, "asleep: nothing due, nothing announced");
        h.store
            .with(|s| s.due.push_back(claimed(11, "crm", "order.created", 1)));
        h.wake.notify_waiters();
        settle().await;
        assert_eq!(h.running(), [[11]], "a wake-up starts new work at once");
        let after_wake = h.claims().len();
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert_eq!(h.claims().len(), after_wake, "asleep again");
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert_eq!(
            h.claims().len(),
            after_wake + 1,
            "the poll interval (250 ms) is the longest sleep"
        );
        h.stop().await;
    }

    #[tokio::test(start_paused = true)]
    async fn retries_over_the_budget_wait_in_the_store_while_first_attempts_go() {
        // Adaptive, so the limit starts below this ceiling: the receiver counts as under
        // pressure, and this budget allows no retries at all.
        let h = Harness::start("concurrency = 8\n[retry_budget]\nratio = 0\nmin_per_sec = 0", 0);
        h.store.with(|s| {
            s.due.push_back(claimed(1, "crm", "order.created", 3));
            s.due.push_back(claimed(2, "crm", "order.created", 1));
            s.due.push_back(claimed(3, "crm", "order.created", 2));
        });
        h.wake.notify_waiters();
        settle().await;
        assert_eq!(h.running(), [[2]], "the first attempt starts");
        let ids: Vec<i64> = h.store.with(|s| s.deferred.iter().map(|(id, _)| *id).collect());
        assert_eq!(ids, [1, 3], "the retries go back to the store");
        let deferred = h.store.with(|s| s.deferred.clone());
        let now = now_ms();
        assert!(
            deferred
                .iter()
                .all(|(_, until)| until.is_some_and(|u| u >= now + 1_000)),
            "not due again before the budget has room: {deferred:?}"
        );
        assert_eq!(h.flow.status().budget.map(|(_, b)| b.held), Some(2));
        h.stop().await;
    }

    #[tokio::test(start_paused = true)]
    async fn a_batched_lane_lingers_for_a_full_batch_and_sends_it_in_one_attempt() {
        let h = Harness::start("class = \"batched\"\nmax_batch = 5\nlinger_ms = 1000", 2);
        settle().await;
        assert!(h.running().is_empty(), "two of five: wait for more");
        tokio::time::sleep(Duration::from_millis(300)).await;
        h.store
            .with(|s| s.due.extend((3..=5).map(|id| claimed(id, "crm", "order.created", 1))));
        h.wake.notify_waiters();
        settle().await;
        assert_eq!(h.running(), [[1, 2, 3, 4, 5]], "a full batch goes at once");
        h.finish_all();
        h.store.with(|s| s.due.push_back(claimed(6, "crm", "order.created", 1)));
        h.wake.notify_waiters();
        tokio::time::sleep(Duration::from_millis(990)).await;
        assert!(h.running().is_empty(), "lingering");
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert_eq!(h.running(), [[6]], "after the linger time, what there is");
        h.stop().await;
    }
}
